"""labgrid places for real: labgrid-coordinator and labgrid-exporter on 127.0.0.1, the exporter serving a
virtual board's pty through ser2net, and the bench run through `--device labgrid:PLACE`.

labgrid runs from its own virtualenv (`make labgrid` → .venv-labgrid; it replaces pyserial's package, see
harness/boards/places.py); the harness and this test never import it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.link import child
from harness.boards.virtual import VirtualBoard

REPO = Path(__file__).resolve().parent.parent
LG_BIN = Path(os.environ.get("HIL_LABGRID_PYTHON") or REPO / ".venv-labgrid" / "bin" / "python").parent
SER2NET = shutil.which("ser2net") or ("/usr/sbin/ser2net" if os.path.exists("/usr/sbin/ser2net") else None)

pytestmark = [
    pytest.mark.skipif(not (LG_BIN / "labgrid-coordinator").exists(),
                       reason="labgrid not installed in .venv-labgrid (`make labgrid`; make test does it)"),
    pytest.mark.skipif(SER2NET is None, reason="ser2net missing (apt-get install ser2net; .ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {**os.environ, "LG_COORDINATOR": self.address}
        self.procs: list = []

    def start(self, cmd: list[str], ready: str, env: dict | None = None, timeout: float = 30) -> None:
        log = open(self.tmp / f"{Path(cmd[0]).name}-{len(self.procs)}.log", "w+")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, env=env or self.env)
        self.procs.append((proc, log))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log.seek(0)
            if ready in log.read():
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        log.seek(0)
        raise RuntimeError(f"{cmd[0]} did not come up: {log.read()[-2000:]}")

    def client(self, *args: str, env: dict | None = None) -> str:
        proc = subprocess.run([str(LG_BIN / "labgrid-client"), *args], capture_output=True, text=True,
                              env=env or self.env, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def exporter(self, name: str, pty: str, env: dict | None = None, power_url: str | None = None) -> None:
        config = self.tmp / f"{name}.yaml"
        # The exporter config is a Jinja2 template: its comments start with ##.
        text = (f"## a virtual board's pty, served by ser2net\nhil:\n  RawSerialPort:\n    port: {pty}\n"
                f"    speed: 921600\n")
        if power_url:  # labgrid's simplerest power backend: GET host.format(index=..., value=1|0)
            text += f"  NetworkPowerPort:\n    model: simplerest\n    host: '{power_url}'\n    index: 0\n"
        config.write_text(text)
        self.start([str(LG_BIN / "labgrid-exporter"), "-c", self.address, "--hostname", "127.0.0.1", "-n", name,
                    str(config)], "connected to coordinator", env=env)

    def acquired(self, place: str) -> str:
        for line in self.client("-p", place, "show").splitlines():
            if line.strip().startswith("acquired:"):
                return line.split(":", 1)[1].strip()
        raise AssertionError("no 'acquired:' in labgrid-client show")

    def stop(self) -> None:
        for proc, log in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


class PowerSwitch:
    """A network power switch as labgrid's `simplerest` model drives it: GET /power/<index>/<1|0> switches,
    GET /power/<index> reads the state. It records what it was asked."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        switch = self
        self.calls: list[str] = []
        self.state = "1"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                parts = self.path.strip("/").split("/")
                if len(parts) == 3:
                    switch.state = parts[2]
                    switch.calls.append(parts[2])
                self.send_response(200)
                self.end_headers()
                self.wfile.write(switch.state.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/power/{{index}}/{{value}}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    lab = Lab(tmp)
    boards = [VirtualBoard("virtual", store_dir=tmp / f"store{i}") for i in range(2)]
    boards.append(VirtualBoard("virtual", store_dir=tmp / "store2", faults=["never-answer"]))  # wedged
    switch = PowerSwitch()
    try:
        lab.start([str(LG_BIN / "labgrid-coordinator"), "-l", lab.address], "Coordinator ready")
        ptys = [vb.start() for vb in boards]
        lab.exporter("exp1", ptys[0])
        # An exporter whose host has no working ser2net: a stand-in that fails as a missing binary would.
        fake = tmp / "fakebin"
        fake.mkdir()
        (fake / "ser2net").write_text("#!/bin/sh\necho 'ser2net: not installed' >&2\nexit 127\n")
        (fake / "ser2net").chmod(0o755)
        lab.exporter("exp2", ptys[1], env={**lab.env, "PATH": f"{fake}:{lab.env['PATH']}"})
        lab.client("-p", "board1", "create")
        lab.client("-p", "board1", "add-match", "exp1/hil/NetworkSerialPort")
        lab.client("-p", "noserial", "create")
        lab.client("-p", "broken", "create")
        lab.client("-p", "broken", "add-match", "exp2/hil/NetworkSerialPort")
        lab.exporter("exp3", ptys[2], power_url=switch.url)
        lab.client("-p", "wedged", "create")
        lab.client("-p", "wedged", "add-match", "exp3/hil/NetworkSerialPort")
        lab.client("-p", "wedged", "add-match", "exp3/hil/NetworkPowerPort")
        lab.switch = switch
        yield lab
    finally:
        switch.close()
        lab.stop()
        for vb in boards:
            vb.stop()


def run_bench(tmp_path: Path, lab: Lab | None, *args: str, env_extra: dict | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "LG_COORDINATOR"}
    if lab is not None:
        env["LG_COORDINATOR"] = lab.address
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--models", "cnn1d_beat",
           "--records", "213", "--max-beats", "30", "--target", "virtual", "--skip-flash",
           "--out", str(tmp_path / "out"), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    path = tmp_path / "out" / "results.json"
    return proc, json.loads(path.read_text()) if path.exists() else None


def one_line(proc, results, code: str, *words: str) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and results is None and "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if code in ln and "fix:" in ln]
    assert lines, text
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_bench_through_a_labgrid_place_and_release(tmp_path, lab):
    proc, results = run_bench(tmp_path, lab, "--device", "labgrid:board1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = results["results"]
    assert result["status"] == "pass" and result["beats"]["verified"] == 30 and result["bit_exact"]["exact"]
    assert result["device"] == "labgrid:board1" and result["provenance"]["board"]["port"] == "labgrid:board1"
    assert lab.acquired("board1") == "None"  # released at the end


def test_place_held_by_another_fails_at_once_then_waits(tmp_path, lab):
    other = {**lab.env, "LG_USERNAME": "ci-other", "LG_HOSTNAME": "runner7"}
    lab.client("-p", "board1", "acquire", env=other)
    try:
        proc, results = run_bench(tmp_path, lab, "--device", "labgrid:board1")
        one_line(proc, results, "HIL255", "place board1 held by runner7/ci-other", "--lg-wait")
        assert lab.acquired("board1") == "runner7/ci-other"  # untouched
        releaser = threading.Timer(2.0, lab.client, args=("-p", "board1", "release"), kwargs={"env": other})
        releaser.start()
        proc, results = run_bench(tmp_path, lab, "--device", "labgrid:board1", "--lg-wait", "60")
        releaser.join()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert results["results"][0]["status"] == "pass"
    finally:
        if lab.acquired("board1") != "None":
            lab.client("-p", "board1", "release", "--kick", env=other)
    assert lab.acquired("board1") == "None"


def test_unknown_place(tmp_path, lab):
    proc, results = run_bench(tmp_path, lab, "--device", "labgrid:nope")
    one_line(proc, results, "HIL252", "labgrid place 'nope' does not exist", "board1")


def test_place_without_serial_port(tmp_path, lab):
    proc, results = run_bench(tmp_path, lab, "--device", "labgrid:noserial")
    one_line(proc, results, "HIL253", "place noserial has no serial port")
    assert lab.acquired("noserial") == "None"  # released after the failure


def test_ser2net_missing_on_the_exporter(tmp_path, lab):
    proc, results = run_bench(tmp_path, lab, "--device", "labgrid:broken")
    one_line(proc, results, "HIL254", "ser2net", "apt-get install ser2net")
    assert lab.acquired("broken") == "None"


def test_coordinator_unreachable(tmp_path):
    proc, results = run_bench(tmp_path, None, "--device", "labgrid:board1", "--lg-coordinator",
                              f"127.0.0.1:{free_port()}")
    one_line(proc, results, "HIL251", "unreachable", "--lg-coordinator")


def test_labgrid_not_installed_or_no_coordinator(tmp_path):
    proc, results = run_bench(tmp_path, None, "--device", "labgrid:board1", "--lg-coordinator", "127.0.0.1:1",
                              env_extra={"HIL_LABGRID_PYTHON": str(tmp_path / "no-python")})
    one_line(proc, results, "HIL250", "labgrid is not installed", "make labgrid")
    proc, results = run_bench(tmp_path, None, "--device", "labgrid:board1")
    one_line(proc, results, "HIL257", "coordinator", "LG_COORDINATOR")


def test_ctrl_c_releases_the_place(tmp_path, lab):
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["LG_COORDINATOR"] = lab.address
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "hil"), "-q", "--models", "cnn1d_beat",
           "--target", "virtual", "--skip-flash", "--device", "labgrid:board1", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while lab.acquired("board1") == "None" and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert lab.acquired("board1") != "None", "the bench never acquired the place"
        time.sleep(3)  # streaming the bundled records (8,000 beats) now
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 30
    while lab.acquired("board1") != "None" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lab.acquired("board1") == "None"


def test_wedged_board_is_power_cycled_through_the_place(tmp_path, lab):
    """A board that answers nothing: the harness cycles the place's power with labgrid's power driver once,
    asks again, and (this one stays wedged) fails with one line that says it tried."""
    lab.switch.calls.clear()
    proc, results = run_bench(tmp_path, lab, "--device", "labgrid:wedged")
    line = one_line(proc, results, "HIL31", "also after power-cycling labgrid place wedged")
    assert lab.switch.calls == ["0", "1"], (lab.switch.calls, line)  # off, then on
    assert lab.acquired("wedged") == "None"
