"""Boards: commands to whatever answers on the link, what a board is, and how to get one.

board (our protocol) and mlperf (MLPerf Tiny's text API), profiles (device_profiles/*.yaml), the real-board path
(build, flash, device, idle), the virtual board (virtual/), many boards (farm) and labgrid places (places, lgplace).

Nothing else here: importing one module of the layer must not import the others (tests/test_layering.py).
"""
