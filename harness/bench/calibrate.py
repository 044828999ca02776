"""`--calibrate`: refit a device profile's cost constants from the per-op cycles a board measured.

The static cost model (harness/bench/costmodel.py) estimates each op as

    op_overhead + MACs × cycles_per_mac[op] + output elements × cycles_per_element

and each invoke as invoke_overhead + Σ ops. With per-op tables of measured device cycles
(`Result.per_op`, source device_cycles: OP_PROFILE on a board) the constants are refitted by non-negative
least squares over every profiled op of the session (scipy.optimize.nnls, relative errors so big and small
ops count alike); `invoke_overhead` is the median of (invoke cycles − Σ op cycles). An op type with MACs but
no profiled op keeps its old constant. The profile's YAML gets the new `cost:` block and a `calibration:`
block naming the board, its firmware build and kernels, the date, the models and the fit's error.

Estimates never calibrate anything: the virtual board's per-op figures are the cost model's own output.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

import numpy as np
import yaml

from ..errors import ConfigError
from ..boards.profiles import Profile, load_profile

# Op types that carry MAC work in the cost model (costmodel._op_work counts MACs for exactly these).
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def _elements(shapes: list[list[int]]) -> int:
    return int(sum(int(np.prod(s)) if s else 1 for s in shapes))


def points(results) -> list[dict]:
    """Every profiled op of results whose per-op cycles are device cycles: {"op", "macs", "elements", "cycles"}."""
    out = []
    for r in results:
        per_op = r.per_op or {}
        if per_op.get("source") != "device_cycles":
            continue
        for op in per_op.get("ops", []):
            out.append({"op": op["op"], "macs": int(op.get("macs") or 0),
                        "elements": _elements(op["shapes"]["out"]), "cycles": float(op["cycles"])})
    return out


def fit(pts: list[dict], results, old: Profile) -> dict:
    """New cost constants (the profile's `cost:` mapping) and fit figures from measured per-op cycles."""
    from scipy.optimize import nnls

    if len(pts) < 3:
        raise ConfigError(f"--calibrate has {len(pts)} profiled ops with device cycles, needs at least 3",
                          "run more models (or a model with more ops) on the board with --per-op-beat set",
                          code="HIL160")
    mac_ops = [op for op in MAC_OPS if any(p["op"] == op and p["macs"] > 0 for p in pts)]
    other_macs = any(p["macs"] > 0 and p["op"] not in MAC_OPS for p in pts)
    columns = ["op_overhead_cycles", "cycles_per_element", *(f"mac:{op}" for op in mac_ops)]
    if other_macs:
        columns.append("mac:default")
    a = np.zeros((len(pts), len(columns)))
    y = np.array([p["cycles"] for p in pts])
    for i, p in enumerate(pts):
        a[i, 0] = 1.0
        a[i, 1] = p["elements"]
        if p["macs"]:
            key = f"mac:{p['op']}" if p["op"] in mac_ops else "mac:default"
            if key in columns:
                a[i, columns.index(key)] = p["macs"]
    weight = 1.0 / np.maximum(y, 1.0)  # relative error: a 500-cycle RESHAPE counts as much as a big conv
    coef, _ = nnls(a * weight[:, None], y * weight)
    predicted = a @ coef
    rel = np.abs(predicted - y) / np.maximum(y, 1.0)
    cpm = dict(old.cost.cycles_per_mac)
    for j, name in enumerate(columns):
        if name.startswith("mac:"):
            cpm[name[4:]] = round(float(coef[j]), 4) or 0.0001  # profiles need positive cycles per MAC
    gaps = [r.per_op["invoke_cycles"] - r.per_op["ops_cycles"] for r in results
            if (r.per_op or {}).get("source") == "device_cycles"]
    cost = {"cycles_per_mac": cpm, "cycles_per_element": round(float(coef[1]), 4),
            "op_overhead_cycles": round(float(coef[0]), 1),
            "invoke_overhead_cycles": round(float(np.median(gaps)), 1) if gaps else old.cost.invoke_overhead_cycles}
    return {"cost": cost, "ops": len(pts), "median_rel_error": round(float(np.median(rel)), 4),
            "max_rel_error": round(float(rel.max()), 4), "refitted": [c.removeprefix("mac:") for c in columns]}


def _yaml_block(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)


def write(profile_path: Path, fitted: dict, board: dict, models: list[str], when: str | None = None) -> None:
    """Replace the profile's `cost:` block (and any earlier `calibration:`) with the fitted one."""
    text = Path(profile_path).read_text()
    when = when or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    # Both blocks run to the end of the file in our profiles; cut from the first of them.
    starts = [m.start() for m in re.finditer(r"^(?:# .*\n)*(?:cost|calibration):", text, flags=re.M)]
    head = text[:min(starts)] if starts else text.rstrip("\n") + "\n"
    calibration = {"calibration": {"board": board, "date": when, "models": models, "ops": fitted["ops"],
                                   "refitted": fitted["refitted"],
                                   "median_rel_error": fitted["median_rel_error"],
                                   "max_rel_error": fitted["max_rel_error"]}}
    block = (f"# Cost constants refitted by `pytest --calibrate` from device cycles per op (harness/bench/calibrate.py),\n"
             f"# {board.get('chip')} {board.get('kernels')} kernels on {board.get('device')}, {when}.\n"
             + _yaml_block({"cost": fitted["cost"]}) + _yaml_block(calibration))
    Path(profile_path).write_text(head + block)
    load_profile(profile_path)  # what we wrote must load: a broken profile is refused now, not next run


def calibrate(profile: Profile, results, device: str) -> str:
    """Fit from `results` of one board and write the profile; returns the line the session prints."""
    mine = [r for r in results if r.profile == profile.name and r.device == device]
    pts = points(mine)
    if not pts:
        raise ConfigError(f"--calibrate: no per-op device cycles from {device} (profile {profile.name})",
                          "the board must answer OP_PROFILE (flash this firmware) and --per-op-beat must not be none",
                          code="HIL160")
    fitted = fit(pts, mine, profile)
    first = next(r for r in mine if (r.per_op or {}).get("source") == "device_cycles")
    firmware = first.provenance.get("firmware") or {}
    board = {"device": device, "chip": firmware.get("chip"), "firmware_build": firmware.get("build_hash"),
             "kernels": firmware.get("kernel_mode")}
    models = sorted({r.model for r in mine if (r.per_op or {}).get("source") == "device_cycles"})
    write(profile.path, fitted, board, models)
    return (f"calibrated {profile.path}: {fitted['ops']} ops of {len(models)} models from {device}, "
            f"median error {fitted['median_rel_error']:.1%} (device cycles per op)")
