"""The link: bytes to and from a board and the frames on them.

transport (pyserial ports, ptys, socket:// and rfc2217:// URLs with our urlhandler package), protocol (frame codec and
messages), stream (the INFER stream's state machine), relay and bootlog (fault injection), rfc2217_server, child
(the helper processes the harness starts).

Nothing else here: importing one module of the layer must not import the others (tests/test_layering.py).
"""
