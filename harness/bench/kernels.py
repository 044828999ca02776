"""Kernels side by side (`--kernels both`): one model on a target's esp-nn build and on its reference build
(ESP-NN's ANSI C kernels, `CONFIG_NN_ANSI_C`), each checked bit for bit against the host, and the speedup
per op and overall on the same beats.

On a board the two builds are flashed in turn (harness/boards/build.py builds `build/<target>` and
`build/<target>-reference`; each has its own build hash). On the virtual board both "builds" compute with
TFLM's reference kernels (there are no ESP-NN kernels on the host) and differ only in whose cost constants
estimate their cycles: the reference build the virtual profile's, the esp-nn build those of the ESP32-S3
profile it mirrors. Its speedup is the cost model's ratio, labelled so, never a measurement.

`compare()` builds `Result.kernels`:

    {"primary": kernels of the case's result, "builds": {"esp-nn": {...}, "reference": {...}},
     "speedup": {"source", "overall", "ci95", "ratio_of_medians", "paired_beats", "method",
                 "per_op": [...], "per_op_beat"} | {"source": None, "reason"}, "note"}
"""

from __future__ import annotations

import numpy as np

from . import perop
from .results import Result

KERNEL_SETS = ("esp-nn", "reference")
# The virtual profile mirrors an ESP32-S3 with reference kernels; its esp-nn "build" is estimated with
# the ESP32-S3 profile's ESP-NN cost constants.
VIRTUAL_ESP_NN_COST_PROFILE = "esp32s3"
BOOTSTRAP_RESAMPLES = 2000

VIRTUAL_NOTE = ("virtual board: both builds compute with TFLM reference kernels (bit-exact by construction); "
                f"the esp-nn build's cycles are the cost model with the {VIRTUAL_ESP_NN_COST_PROFILE} profile's "
                "ESP-NN constants, the reference build's with the virtual profile's: the speedup is the cost "
                "model's ratio, not a measurement")


def other(kernels: str) -> str:
    """The build to compare with: esp-nn ↔ reference."""
    return "reference" if kernels == "esp-nn" else "esp-nn"


def virtual_cost_profile(kernels: str, profile_kernels: str) -> str | None:
    """The --cost-profile a virtual board takes to stand for the `kernels` build (None: its own profile)."""
    if kernels == profile_kernels:
        return None
    return VIRTUAL_ESP_NN_COST_PROFILE if kernels == "esp-nn" else None


def label(result: Result, build: str, cost_profile: str | None = None) -> dict:
    """provenance["kernels"]: which build ran, what the board reported, what really computed the outputs."""
    firmware = result.provenance.get("firmware") or {}
    virtual = firmware.get("chip") == "virtual"
    out = {"build": build, "reported": firmware.get("kernel_mode"),
           "computed_with": "TFLM reference kernels (virtual board)" if virtual else firmware.get("kernel_mode")}
    if virtual:
        out["cycles_from"] = f"cost model, {cost_profile or result.profile} profile constants"
    return out


def _summary(result: Result, build: str) -> dict:
    kernels = result.provenance.get("kernels") or {}
    return {"build": build, "status": result.status, "reported_kernels": kernels.get("reported"),
            "computed_with": kernels.get("computed_with"), "cycles_from": kernels.get("cycles_from"),
            "build_hash": (result.provenance.get("firmware") or {}).get("build_hash"),
            "bit_exact": result.is_bit_exact, "mismatching_beats": result.bit_exact.get("mismatching_beats"),
            "verified_beats": result.beats.get("verified"), "latency_source": result.latency_source,
            "latency_p50_us": result.latency_us("median"), "failure": result.failure_line or None}


def paired_speedup(fast: np.ndarray, slow: np.ndarray, warmup: int, seed: int = 0) -> dict:
    """Per-beat slow ÷ fast cycles on the same beats after warm-up: median and a 95 % bootstrap CI."""
    n = min(len(fast), len(slow))
    fast, slow = np.asarray(fast[:n], dtype=np.float64), np.asarray(slow[:n], dtype=np.float64)
    keep = slice(min(warmup, n), n)
    fast, slow = fast[keep], slow[keep]
    ok = fast > 0
    ratios = slow[ok] / fast[ok]
    if len(ratios) == 0:
        return {"overall": None, "ci95": None, "ratio_of_medians": None, "paired_beats": 0}
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(ratios, size=(BOOTSTRAP_RESAMPLES, len(ratios)), replace=True), axis=1)
    return {"overall": float(np.median(ratios)), "ci95": [float(np.percentile(boot, 2.5)),
                                                          float(np.percentile(boot, 97.5))],
            "ratio_of_medians": float(np.median(slow) / np.median(fast)), "paired_beats": int(len(ratios))}


def compare(primary: str, runs: dict[str, Result], cycles: dict[str, np.ndarray], warmup: int) -> dict:
    """Result.kernels for one model run on both builds (`runs` and their per-beat `cycles` by kernels)."""
    builds = {k: _summary(r, k) for k, r in runs.items()}
    virtual = any(((r.provenance.get("firmware") or {}).get("chip") == "virtual") for r in runs.values())
    out = {"primary": primary, "builds": builds, "note": VIRTUAL_NOTE if virtual else None}
    fast, slow = runs.get("esp-nn"), runs.get("reference")
    if fast is None or slow is None:
        out["speedup"] = {"source": None, "reason": "only one build ran"}
        return out
    if fast.status != "pass" or slow.status != "pass":
        out["speedup"] = {"source": None, "reason": "a build did not finish its run (see builds.*.failure)"}
        return out
    if fast.latency_source != slow.latency_source:
        out["speedup"] = {"source": None, "reason": f"the builds' cycles come from different sources "
                                                    f"({fast.latency_source} vs {slow.latency_source})"}
        return out
    speed = paired_speedup(cycles["esp-nn"], cycles["reference"], warmup)
    speed.update(source=fast.latency_source,
                 method="per-beat reference cycles ÷ esp-nn cycles on the same beats after warm-up: median, "
                        f"95 % bootstrap CI ({BOOTSTRAP_RESAMPLES} resamples, seed 0)")
    if fast.per_op.get("ops") and slow.per_op.get("ops") and fast.per_op.get("beat") == slow.per_op.get("beat"):
        speed["per_op"] = perop.speedup(fast.per_op, slow.per_op)
        speed["per_op_beat"] = fast.per_op.get("beat")
        speed["per_op_note"] = "one profiled beat per build: no uncertainty stated for the per-op ratios"
    else:
        speed["per_op"] = []
        speed["per_op_note"] = "per-op figures missing from a build (see its per_op)"
    out["speedup"] = speed
    return out


def lines(results) -> list[str]:
    """Terminal lines for --kernels both: each build's verdict and the speedup, labelled by source."""
    out = []
    for r in results:
        k = r.kernels or {}
        if not k.get("builds"):
            continue
        verdicts = ", ".join(f"{b} {'bit-exact' if d.get('bit_exact') else 'NOT bit-exact' if d.get('bit_exact') is False else d.get('status')}"
                             for b, d in k["builds"].items())
        speed = k.get("speedup") or {}
        if speed.get("overall") is not None:
            lo, hi = speed["ci95"]
            est = " (cost-model ratio, not measured)" if speed.get("source") == "static_estimate" else ""
            text = f"esp-nn ×{speed['overall']:.2f} faster than reference (95 % CI {lo:.2f}–{hi:.2f}, {speed['paired_beats']} paired beats){est}"
            ops = sorted(speed.get("per_op") or [], key=lambda op: -(op.get("slow_cycles") or 0))[:3]
            if ops:
                text += "; per op: " + ", ".join(f"#{op['index']} {op['op']} ×{op['speedup']:.2f}" for op in ops
                                                 if op.get("speedup") is not None)
        else:
            text = f"no speedup: {speed.get('reason')}"
        out.append(f"kernels {r.name}: {verdicts}; {text}")
    return out


def evidence_lines(results) -> list[str]:
    """One line when bit-exactness held by construction (the virtual board), naming the conformance models."""
    by_construction = [r for r in results if (r.bit_exact or {}).get("evidence", "").startswith("by construction")]
    if not by_construction:
        return []
    conformance = sorted({r.model for r in by_construction if r.task == "conformance"})
    text = ("bit-exact by construction on the virtual board (TFLM reference kernels, as the tflm cross-check): "
            "no evidence about a board's optimized kernels")
    if conformance:
        text += f"; the kernel conformance models ({len(conformance)}) are evidence only on a board"
    return [text]
