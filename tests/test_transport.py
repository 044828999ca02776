"""Opening links (harness/link/transport.py): real ptys and a local TCP server; errors are one typed line."""

from __future__ import annotations

import errno
import grp
import os
import socket
import threading
import time

import pytest
import serial

from harness.link import transport
from harness.errors import BoardBusyError, LinkError
from harness.link.transport import open_link


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    name = os.ttyname(slave)
    yield master, name
    os.close(slave)
    os.close(master)


def test_no_such_device_is_hil201_one_line():
    with pytest.raises(LinkError) as info:
        open_link("/dev/ttyUSB-hil-does-not-exist", 115200)
    err = info.value
    assert err.code == "HIL201"
    assert "/dev/ttyUSB-hil-does-not-exist" in str(err)
    assert "--device virtual" in err.hint and "ls /dev/ttyUSB*" in err.hint
    assert "\n" not in str(err)


def test_pty_bytes_both_ways(pty_pair):
    master, name = pty_pair
    with open_link(name, 921600) as link:
        assert (link.url, link.baud, link.is_local) == (name, 921600, True)
        link.write(b"\x00ping\x00")
        time.sleep(0.05)
        assert os.read(master, 100) == b"\x00ping\x00"
        os.write(master, b"pong" * 1000)
        got = b""
        deadline = time.monotonic() + 2
        while len(got) < 4000 and time.monotonic() < deadline:
            got += link.read(65536)
        assert got == b"pong" * 1000
        start = time.monotonic()
        assert link.read() == b""  # nothing pending: returns after the link timeout, not later
        assert time.monotonic() - start < 0.5
        link.pulse_reset("none")


def test_second_open_of_a_pty_is_busy_and_names_our_pid(pty_pair):
    _, name = pty_pair
    first = open_link(name, 115200)
    try:
        with pytest.raises(BoardBusyError) as info:
            open_link(name, 115200)
        err = info.value
        assert err.code == "HIL203"
        assert f"board busy: {name} is held by PID {os.getpid()}" in str(err)
        assert "pytest" in str(err) or "python" in str(err)  # our command line, read from /proc
        assert transport.lock_path(name).read_text().strip() == str(os.getpid())
    finally:
        first.close()
    # Released on close: the board can be opened again.
    open_link(name, 115200).close()


def test_busy_port_without_our_lock_file_still_fails_fast(pty_pair):
    # Another tool (e.g. a serial monitor) holds the port with pyserial's exclusive flock, not our lock file.
    _, name = pty_pair
    other = serial.serial_for_url(name, 115200, exclusive=True)
    try:
        with pytest.raises(BoardBusyError) as info:
            open_link(name, 115200)
        assert info.value.code == "HIL203"
        assert name in str(info.value)
    finally:
        other.close()
    open_link(name, 115200).close()  # and our lock file was released after the failed open


def test_permission_denied_is_hil202_with_the_owning_group(pty_pair, monkeypatch):
    _, name = pty_pair

    def refuse(url, *args, **kwargs):
        raise serial.SerialException(errno.EACCES, f"could not open port {url}: [Errno 13] Permission denied")

    monkeypatch.setattr(serial, "serial_for_url", refuse)
    monkeypatch.setattr(transport, "device_group", lambda path: "dialout")
    with pytest.raises(LinkError) as info:
        open_link(name, 115200)
    err = info.value
    assert err.code == "HIL202"
    assert "group 'dialout'" in str(err)
    assert "sudo usermod -aG dialout $USER" in err.hint
    assert "\n" not in str(err)


def test_device_group_reads_the_node_owner(tmp_path):
    node = tmp_path / "ttyFAKE0"
    node.write_bytes(b"")
    group = next((g for g in grp.getgrall() if g.gr_name in ("dialout", "uucp", "tty")), grp.getgrall()[-1])
    os.chown(node, -1, group.gr_gid)
    os.chmod(node, 0o660)
    assert transport.device_group(str(node)) == group.gr_name
    assert transport.device_group(str(tmp_path / "absent")) is None


def test_lock_file_is_keyed_by_real_path(tmp_path, pty_pair):
    _, name = pty_pair
    alias = tmp_path / "by-id-link"
    alias.symlink_to(name)
    assert transport.lock_path(str(alias)) == transport.lock_path(name)
    first = open_link(name, 115200)
    try:
        with pytest.raises(BoardBusyError):
            open_link(str(alias), 115200)
    finally:
        first.close()


def test_reset_lines_on_a_pty_are_a_typed_error(pty_pair):
    _, name = pty_pair
    with open_link(name, 115200) as link:
        with pytest.raises(LinkError) as info:
            link.pulse_reset("rts-dtr")
        assert info.value.code == "HIL205" and "reset: none" in info.value.hint
        with pytest.raises(LinkError):
            link.pulse_reset("jtag-magic")


def test_socket_url_to_a_local_tcp_server():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo_upper():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data.upper())

    thread = threading.Thread(target=echo_upper, daemon=True)
    thread.start()
    try:
        with open_link(f"socket://127.0.0.1:{port}", 921600) as link:
            assert not link.is_local
            link.write(b"hello board")
            got = b""
            deadline = time.monotonic() + 2
            while len(got) < 11 and time.monotonic() < deadline:
                got += link.read()
            assert got == b"HELLO BOARD"
    finally:
        server.close()


def test_socket_url_nobody_listening_is_a_typed_error():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(LinkError) as info:
        open_link(f"socket://127.0.0.1:{port}", 115200)
    assert info.value.code == "HIL206" and "\n" not in str(info.value)


def test_unknown_url_scheme_is_a_typed_error():
    with pytest.raises(LinkError) as info:
        open_link("carrier-pigeon://loft", 115200)
    assert info.value.code == "HIL200"


def test_link_lost_while_reading_is_a_typed_error():
    master, slave = os.openpty()
    name = os.ttyname(slave)
    link = open_link(name, 115200)
    try:
        os.close(slave)
        os.close(master)  # the far end disappears, as an unplugged USB bridge does
        with pytest.raises(LinkError) as info:
            for _ in range(5):
                link.read()
        assert info.value.code == "HIL204"
    finally:
        link.close()


# -- control lines: opening never resets, a reset is esptool's -----------------------------------------

class _LineRecorder(serial.Serial):
    """A real pyserial port (on a pty) whose DTR/RTS writes are recorded instead of sent: a pty has no
    control lines. `lines` is the (dtr, rts) state after each write, as the board's circuit would see it."""

    lines: list

    def _update_dtr_state(self):
        self.lines.append(("DTR", self._dtr_state))

    def _update_rts_state(self):
        self.lines.append(("RTS", self._rts_state))


def _states(events):
    """Replay line writes from the OS's state at open (both asserted) into (dtr, rts) states."""
    dtr = rts = True
    out = []
    for item in events:
        if item[0] == "sleep":
            out.append(item)
            continue
        name, value = item
        dtr, rts = (value, rts) if name == "DTR" else (dtr, value)
        out.append((dtr, rts))
    return out


def _en_low(state) -> bool:
    # The devkit auto-reset circuit (and the USB-Serial-JTAG's): EN is pulled low by RTS asserted while DTR
    # is not; both asserted or both released leave EN high.
    return state != "sleep" and state[1] and not state[0]


@pytest.fixture
def recorded(monkeypatch, pty_pair):
    _, name = pty_pair
    events: list = []
    real = serial.serial_for_url

    def serial_for_url(url, *args, **kwargs):
        if url != name:
            return real(url, *args, **kwargs)
        port = _LineRecorder(None, *args, **{k: v for k, v in kwargs.items() if k != "do_not_open"})
        port.lines = events
        port.port = url
        if not kwargs.get("do_not_open"):
            port.open()
        return port

    monkeypatch.setattr(transport.serial, "serial_for_url", serial_for_url)
    return name, events


def test_opening_a_port_never_pulls_en_low(recorded):
    name, events = recorded
    with open_link(name, 115200):
        states = _states(events)
    assert events, "open_link set no control line at all"
    assert not any(_en_low(s) for s in states), f"EN pulled low while opening: {states}"
    assert states[-1] == (False, False)  # both released: idle, as esptool's hard reset expects them


@pytest.mark.parametrize("method, uses_usb", [("rts-dtr", False), ("usb-jtag", True)])
def test_pulse_reset_is_esptools_hard_reset(recorded, monkeypatch, method, uses_usb):
    from esp_pylib import serial_reset
    from esptool.reset import HardReset

    name, events = recorded
    monkeypatch.setattr(serial_reset.time, "sleep", lambda s: events.append(("sleep", s)))
    with open_link(name, 115200) as link:
        events.clear()
        link.pulse_reset(method)
        ours = list(events)
        events.clear()
        HardReset(link._port, uses_usb=uses_usb).reset()  # noqa: SLF001 - esptool on the very same port
        theirs = list(events)
    assert ours == theirs
    states = _states([("DTR", False), ("RTS", False)] + ours)[2:]  # from idle, as open_link leaves the lines
    assert sum(1 for a, b in zip([(False, False)] + states, states) if not _en_low(a) and _en_low(b)) == 1
    assert not _en_low([s for s in states if s != "sleep"][-1])  # and released again: the app runs
    assert ("sleep", 0.2 if uses_usb else 0.1) in ours
