"""Device profiles: what a board is (chip, clock, memory, link) and how to estimate its cost.

A profile is a YAML file in `device_profiles/`. It is validated on load: every mistake names the file,
the key and the fix, so a typo in CI fails in one line rather than deep inside a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ProfileError

PROFILES_DIR = Path(__file__).resolve().parent.parent.parent / "device_profiles"

TRANSPORTS = ("pty", "uart", "usb-serial-jtag", "socket")
RESETS = ("none", "rts-dtr", "usb-jtag")
KERNELS = ("reference", "esp-nn")
PROTOCOLS = ("hil", "mlperf-tiny")  # what the board's firmware speaks (harness/boards/board.py, harness/boards/mlperf.py)


@dataclass(frozen=True)
class CostConstants:
    """Static cost model: cycles = invoke overhead + Σ per op (overhead + MACs × cycles/MAC + elements × c)."""

    cycles_per_mac: dict[str, float]
    cycles_per_element: float
    op_overhead_cycles: float
    invoke_overhead_cycles: float

    def mac_cycles(self, op: str) -> float:
        return self.cycles_per_mac.get(op, self.cycles_per_mac["default"])


@dataclass(frozen=True)
class Profile:
    name: str
    chip: str
    description: str
    cpu_mhz: int
    baud: int
    ram_bytes: int
    flash_bytes: int
    psram_bytes: int
    arena_bytes: int
    model_max_bytes: int
    transport: str
    reset: str
    kernels: str
    timeout_s: float
    window: int
    cost: CostConstants
    path: Path = field(compare=False)
    protocol: str = "hil"
    # Where the cost constants came from when `pytest --calibrate` refitted them (harness/bench/calibrate.py):
    # {"board", "date", "models", "ops", ...}; None for hand-set constants.
    calibration: dict | None = field(default=None, compare=False)

    def cycles_to_us(self, cycles: float) -> float:
        return cycles / self.cpu_mhz


_INT_KEYS = ("cpu_mhz", "baud", "ram_bytes", "flash_bytes", "psram_bytes", "arena_bytes", "model_max_bytes",
             "window")


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a profile by name (`esp32s3`) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(f"unknown device profile '{name_or_path}'",
                               f"use one of: {', '.join(available())}, or give a path to a profile YAML",
                               code="HIL102")
    elif not path.is_file():
        raise ProfileError(f"device profile file {path} does not exist",
                           "check the path, or use a profile name from device_profiles/", code="HIL102")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ProfileError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})",
                           "fix the YAML syntax; compare with device_profiles/esp32.yaml") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: expected a mapping of keys, got {type(raw).__name__}",
                           "start from a copy of device_profiles/esp32.yaml")
    return _validate(raw, path)


def _calibration(raw: Any, fail) -> dict | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("board"), dict) or not raw.get("date"):
        raise fail("calibration", "must be a mapping with board and date (written by pytest --calibrate)",
                   "rerun pytest --calibrate on the board, or remove the calibration block")
    return dict(raw)


def _validate(raw: dict[str, Any], path: Path) -> Profile:
    def fail(key: str, why: str, fix: str) -> ProfileError:
        return ProfileError(f"{path}: key '{key}' {why}", fix)

    def get(key: str, kind: type, *, positive: bool = True) -> Any:
        if key not in raw:
            raise fail(key, "is missing", f"add '{key}:' (see device_profiles/esp32.yaml)")
        value = raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise fail(key, f"must be {kind.__name__}, got {value!r}", f"set '{key}' to a {kind.__name__}")
        if positive and kind in (int, float) and value <= 0 and key != "psram_bytes":
            raise fail(key, f"must be > 0, got {value!r}", f"set '{key}' to a positive number")
        if kind in (int, float) and value < 0:
            raise fail(key, f"must be ≥ 0, got {value!r}", f"set '{key}' to 0 or more")
        return value

    def choice(key: str, options: tuple[str, ...]) -> str:
        value = get(key, str)
        if value not in options:
            raise fail(key, f"is '{value}', not one of {', '.join(options)}", f"set '{key}' to one of them")
        return value

    known = {"name", "chip", "description", "timeout_s", "transport", "reset", "kernels", "cost", "protocol",
             "calibration", *_INT_KEYS}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise fail(unknown[0], "is not a profile key", f"remove it or fix its spelling; keys: {', '.join(sorted(known))}")

    ints = {key: get(key, int) for key in _INT_KEYS}
    if ints["arena_bytes"] > ints["ram_bytes"] + ints["psram_bytes"]:
        raise fail("arena_bytes", f"({ints['arena_bytes']}) exceeds ram_bytes + psram_bytes",
                   "lower arena_bytes or declare the PSRAM in psram_bytes")
    if ints["model_max_bytes"] > ints["flash_bytes"]:
        raise fail("model_max_bytes", "exceeds flash_bytes", "lower model_max_bytes to the model partition size")
    if ints["window"] > 64:
        raise fail("window", "must be ≤ 64 (protocol limit)", "set window to 64 or less")

    cost_raw = raw.get("cost")
    if not isinstance(cost_raw, dict):
        raise fail("cost", "is missing or not a mapping", "add a 'cost:' block (see device_profiles/esp32.yaml)")
    cpm = cost_raw.get("cycles_per_mac")
    if not isinstance(cpm, dict) or "default" not in cpm:
        raise fail("cost.cycles_per_mac", "must be a mapping with a 'default' entry",
                   "add 'default: <cycles per MAC>' under cost.cycles_per_mac")
    for op, value in cpm.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise fail(f"cost.cycles_per_mac.{op}", f"must be a positive number, got {value!r}",
                       "give cycles per MAC as a number")
    cost_vals = {}
    for key in ("cycles_per_element", "op_overhead_cycles", "invoke_overhead_cycles"):
        value = cost_raw.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise fail(f"cost.{key}", f"must be a number ≥ 0, got {value!r}", f"set cost.{key}")
        cost_vals[key] = float(value)
    extra = sorted(set(cost_raw) - {"cycles_per_mac", *cost_vals})
    if extra:
        raise fail(f"cost.{extra[0]}", "is not a cost key", "remove it or fix its spelling")

    return Profile(
        name=get("name", str),
        chip=get("chip", str),
        description=str(raw.get("description", "")),
        transport=choice("transport", TRANSPORTS),
        reset=choice("reset", RESETS),
        kernels=choice("kernels", KERNELS),
        protocol=choice("protocol", PROTOCOLS) if "protocol" in raw else "hil",
        calibration=_calibration(raw.get("calibration"), fail),
        timeout_s=get("timeout_s", float),
        cost=CostConstants(cycles_per_mac={k: float(v) for k, v in cpm.items()}, **cost_vals),
        path=path,
        **ints,
    )


def _chip_id(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def check_board(profile: Profile, hello, where: str, *, kernels: str | None = None) -> None:
    """Refuse a board whose HELLO contradicts the profile the run is judged by.

    The profile decides what is checked on the host before upload (model store, arena), which baseline
    gates the figures and what the results claim about the board; with --skip-flash (or a third-party
    board) nothing else guarantees that the board is that board. Checked: chip (HELLO's `chip`, e.g. the
    ESP-IDF target name), kernels (`kernels` overrides the profile's, for a run that means another build),
    and that the board's tensor arena and model store are at least the profile's.
    """
    fix_target = "pass the --target whose profile describes this board, or the right --device"
    if _chip_id(hello.chip) != _chip_id(profile.chip):
        raise ProfileError(f"board on {where} reports chip '{hello.chip}' in HELLO, profile {profile.name} says "
                           f"'{profile.chip}'", f"{fix_target} (a profile with chip: {hello.chip})", code="HIL140")
    want = kernels or profile.kernels
    if hello.kernel_mode != want:
        raise ProfileError(f"board on {where} runs {hello.kernel_mode} kernels, profile {profile.name} says {want}",
                           f"flash the firmware built for {profile.name} (run without --skip-flash), or {fix_target}",
                           code="HIL141")
    if hello.arena_size < profile.arena_bytes:
        raise ProfileError(f"board on {where} has a {hello.arena_size}-byte tensor arena, profile {profile.name} "
                           f"promises {profile.arena_bytes} (arena_bytes; models are checked against it)",
                           f"lower arena_bytes in {profile.path.name} to {hello.arena_size}, or flash the firmware "
                           f"built for {profile.name} (run without --skip-flash)", code="HIL142")
    if hello.store_capacity < profile.model_max_bytes:
        raise ProfileError(f"board on {where} has a {hello.store_capacity}-byte model store, profile "
                           f"{profile.name} promises {profile.model_max_bytes} (model_max_bytes)",
                           f"lower model_max_bytes in {profile.path.name} to {hello.store_capacity}, or flash the "
                           f"firmware built for {profile.name} (run without --skip-flash)", code="HIL143")
