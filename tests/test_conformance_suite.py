"""The conformance suite (tests/conformance) can fail: run against a device that breaks rules, it says which.

The device is the scripted test peer of tests/test_board.py on a pty: it speaks protocol 1.0 and answers
every broken candidate with NAK reason 4 (bad CRC), whatever was wrong with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_board import PeerDevice

REPO = Path(__file__).resolve().parents[1]
SPEC = "tests/conformance/test_spec.py::"


def test_suite_names_the_rules_a_device_breaks_and_skips_1_1_rules_for_a_1_0_device():
    master, slave = os.openpty()
    peer = PeerDevice(master)
    peer.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/conformance", "--device", os.ttyname(slave), "--baud", "921600",
             "-k", "s1_3_every or s4_1", "-rA", "-q", "-p", "no:cacheprovider"],
            cwd=REPO, capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        peer.stop.set()
        peer.join(timeout=2)
        os.close(slave)
        os.close(master)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    rule = SPEC + "test_s1_3_every_broken_candidate_gets_one_nak_with_its_reason"
    for name in ("bad_cobs_overrun", "bad_length_short", "bad_version"):
        assert f"FAILED {rule}[{name}]" in out, out
    assert f"PASSED {rule}[bad_crc]" in out, out
    assert "expected NAK(3), got [4]" in out
    assert f"PASSED {SPEC}test_s4_1_an_empty_hello_gets_exactly_the_v1_layout" in out
    assert "speaks protocol 1.0" in out  # the 1.1 negotiation rule is skipped, not failed
