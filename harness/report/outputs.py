"""Reports of a session: results.json, a JUnit XML file (junitparser) and the terminal table.

Every file is written atomically: into a temporary file in the same directory, then `os.replace`d over
the target, so a crash or a serialisation bug never leaves a truncated report (CI would read it as a
broken run or, worse, as fewer tests) and an existing report stays intact until the new one is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from junitparser import Error, Failure, JUnitXml, Properties, Property, TestCase, TestSuite

from .. import __version__
from ..errors import ReportError
from ..bench.results import Result, _plain

RESULTS_SCHEMA = 1


# -- atomic writes ---------------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(fh)` on a temporary file next to `path`, then move it over `path` in one step.

    Missing parent directories are created. If `write` raises, the temporary file is removed and the
    exception propagates; `path` is untouched. An unusable directory raises ReportError (HIL601).
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(path, exc) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); reports are artefacts other users and CI must read.
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _unwritable(path, exc) from None
        raise
    return path


def _unwritable(path: Path, exc: OSError) -> ReportError:
    why = exc.strerror or type(exc).__name__
    return ReportError(f"cannot write {path}: {why}",
                       f"pass an output path in a writable directory, or fix the permissions of {path.parent}",
                       code="HIL601")


def check_writable(folder: str | os.PathLike) -> None:
    """Fail before a run, not after it, when the reports could not be written (HIL601)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".hil-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _unwritable(folder / "results.json", exc) from None


# -- results.json ----------------------------------------------------------------------------------------
def write_results_json(path: str | os.PathLike, results: Sequence[Result], *, session: dict,
                       manifest: dict | None = None) -> Path:
    """Write {"schema", "harness_version", "session", "manifest", "results"} to `path`, atomically.

    `manifest`: harness/report/manifest.py's reproducibility manifest (left out when None).
    """
    document = {
        "schema": RESULTS_SCHEMA,
        "harness_version": __version__,
        "session": session,
        **({"manifest": _plain(manifest)} if manifest is not None else {}),
        "results": [result.to_dict() for result in results],
    }

    def write(fh: IO[bytes]) -> None:
        text = _TextSink(fh)
        # allow_nan=False: a NaN must not slip into a file that strict JSON readers reject.
        json.dump(document, text, indent=2, ensure_ascii=False, allow_nan=False)
        text.write("\n")

    return atomic_write(path, write)


def read_results_json(path: str | os.PathLike) -> tuple[dict, list[Result]]:
    """Read a results.json written by `write_results_json` → (session, results)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror}", "check the path", code="HIL602") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})",
                          "regenerate it by running the bench again", code="HIL602") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise ReportError(f"{path}: no 'results' list", "regenerate it by running the bench again",
                          code="HIL602")
    if document.get("schema") != RESULTS_SCHEMA:
        raise ReportError(f"{path}: schema {document.get('schema')!r}, this harness reads {RESULTS_SCHEMA}",
                          "regenerate it with this harness version", code="HIL602")
    return document.get("session") or {}, [Result.from_dict(item) for item in document["results"]]


class _TextSink:
    """Text adapter over a binary file that writes each JSON chunk as it is produced (no full copy)."""

    def __init__(self, fh: IO[bytes]):
        self._fh = fh

    def write(self, text: str) -> int:
        return self._fh.write(text.encode("utf-8"))


# -- JUnit -----------------------------------------------------------------------------------------------
def write_junit(path: str | os.PathLike, results: Sequence[Result], *, suite: str = "hil-bench",
                merge: bool = True) -> Path:
    """Write one testcase per result into the test suite `suite` of a JUnit XML file, atomically.

    testcase: classname `hil.<profile>`, name `<model>@<device>`, a <property> per figure
    (Result.figures()), and a <failure> (status fail) or <error> (status error) with the one-line message.
    With `merge` and an existing file, its other suites and testcases are kept and a testcase with the
    same classname and name is replaced, so several sessions (one per board) can share one file.
    """
    path = Path(path)
    xml = _load_junit(path) if merge and path.exists() else JUnitXml()
    target = next((s for s in xml if s.name == suite), None)
    if target is None:
        target = TestSuite(suite)
        xml.add_testsuite(target)

    new_cases = [_testcase(result) for result in results]
    new_ids = {(case.classname, case.name) for case in new_cases}
    for old in list(target):
        if (old.classname, old.name) in new_ids:
            target.remove_testcase(old)
    target.add_testcases(new_cases)
    xml.update_statistics()

    def write(fh: IO[bytes]) -> None:
        xml.write(fh)

    return atomic_write(path, write)


def _load_junit(path: Path) -> JUnitXml:
    try:
        return JUnitXml.fromfile(str(path))
    except Exception as exc:  # noqa: BLE001 -- XML ParseError, OSError or junitparser's JUnitXmlError
        raise ReportError(f"cannot merge into {path}: not a JUnit XML file ({exc})",
                          "delete it or write the JUnit report to another path", code="HIL603") from None


def _testcase(result: Result) -> TestCase:
    wall = result.throughput.get("wall_s")
    case = TestCase(result.name, f"hil.{result.profile}", time=wall if isinstance(wall, (int, float)) else None)
    properties = Properties()
    for name, value in result.figures().items():
        properties.add_property(Property(name, _property_text(value)))
    case.append(properties)
    if result.gate:
        # Every comparison the gate made, passes included, one line each (the failure text has the others).
        case.system_out = "\n".join(str(g.get("line") or "") for g in result.gate)
    if result.status == "fail":
        case.result = [_with_text(Failure(result.failure_line or "failed",
                                          (result.failure or {}).get("kind")), result)]
    elif result.status == "error":
        case.result = [_with_text(Error(result.failure_line or "error",
                                        (result.failure or {}).get("kind")), result)]
    return case


def _with_text(element: Failure | Error, result: Result) -> Failure | Error:
    gate_lines = [g.get("line") for g in result.gate if g.get("outcome") != "pass"]
    lines = [result.failure_line, *(gate_lines if result.gate else result.regressions)]
    element.text = "\n".join(line for line in lines if line)
    return element


def _property_text(value: str | float | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# -- terminal table --------------------------------------------------------------------------------------
TABLE_WIDTH = 120
LEGEND = ("est. = static cost-model estimate, not measured; host wall time is not device latency\n"
          "p50/p99 unmarked = device cycles ÷ CPU MHz; beats/s = host wall time; "
          "✗ n = n beats differ from the reference\n"
          "(timer) = the device's own µs timer (MLPerf Tiny's m-lap-us laps)\n"
          "n/m part = bit-exact on the n beats verified of m, run incomplete (never counted as bit-exact)")
PARTIAL_NOTE = "* = the run stopped early: its figures cover only the verified beats"


TABLE_HEADER = ("model", "device", "bit-exact", "acc", "macro-F1", "p50", "p99", "arena", "beats/s", "status")


def summary_cells(results: Sequence[Result]) -> tuple[list[str], list[list[str]]]:
    """The table's header and cells, shared by the terminal table, summary.md and report.html."""
    return list(TABLE_HEADER), [_row(result) for result in results]


def format_table(results: Sequence[Result]) -> str:
    """One plain-text table, model × device, that fits in 120 columns, with a legend line below."""
    header, rows = summary_cells(results)
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i])
              for i in range(len(header))]
    gap = 2
    # Long names (socket:// URLs, paths) are the only cells allowed to shrink; cut the longer one first.
    while sum(widths) + gap * (len(widths) - 1) > TABLE_WIDTH and max(widths[0], widths[1]) > 8:
        widest = 0 if widths[0] >= widths[1] else 1
        widths[widest] -= 1
    numeric = {3, 4, 5, 6, 7, 8}

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            cell = _clip(cell, widths[i])
            out.append(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]))
        return (" " * gap).join(out).rstrip()

    lines = [line(header), line(["-" * w for w in widths])]
    lines += [line(row) for row in rows]
    if not rows:
        lines.append("(no results)")
    lines.append(LEGEND)
    if any(result.partial for result in results):
        lines.append(PARTIAL_NOTE)
    lines += _anomaly_lines(results)
    return "\n".join(lines)


ANOMALY_NOTE = ("AD = autoencoder: acc and F1 are anomaly detection (abnormal beats vs normal, at the model's "
                "threshold), not class accuracy and macro-F1")


def _anomaly_lines(results: Sequence[Result]) -> list[str]:
    """Under the table, for autoencoders: what their acc/F1 cells mean, and the figures behind them."""
    lines = []
    for result in results:
        if result.task != "autoencoder" or not result.accuracy:
            continue
        if not lines:
            lines.append(ANOMALY_NOTE)
        found = result.accuracy.get("anomaly") or {}
        mean = result.accuracy.get("mean_error")
        def num(value: float | None) -> str:
            return "–" if value is None else f"{value:.4g}"

        parts = [f"mean reconstruction error {num(mean)} (MSE)", f"threshold {num(found.get('threshold'))}"]
        parts += [f"{label} {num(found.get(key))}" for key, label in (("se", "Se"), ("sp", "Sp"), ("ppv", "+P"))]
        lines.append(f"{result.name}: " + ", ".join(parts))
    return lines


def _row(result: Result) -> list[str]:
    exact = result.is_bit_exact
    mismatching = result.bit_exact.get("mismatching_beats")
    if exact is None:
        bit = "–"
    elif exact:
        bit = "✓"
    elif result.partial and not mismatching:
        # Never ✓: the beats the run did not reach were not checked.
        bit = f"{result.beats.get('verified', '?')}/{result.beats.get('total', '?')} part"
    else:
        bit = f"✗ {mismatching if mismatching is not None else '?'}"
    accuracy = result.accuracy_value
    macro_f1 = result.macro_f1_value
    mark = ""
    if result.task == "autoencoder":  # anomaly-detection figures, marked (see ANOMALY_NOTE)
        macro_f1 = (result.accuracy.get("anomaly") or {}).get("f1")
        mark = " AD"
    arena = result.arena_used_bytes
    beats_per_s = result.throughput.get("beats_per_s")
    return [
        result.model,
        result.device,
        bit,
        "–" if accuracy is None else f"{accuracy:.4f}{mark}",
        "–" if macro_f1 is None else f"{macro_f1:.4f}{mark}",
        _latency_cell(result, "median"),
        _latency_cell(result, "p99"),
        "–" if arena is None else f"{arena / 1024:.1f} KiB",
        "–" if beats_per_s is None else f"{beats_per_s:.1f}",
        _status_cell(result),
    ]


def _latency_cell(result: Result, stat: str) -> str:
    value = result.latency_us(stat)
    if value is None:
        return "–"
    text = f"{value:,.0f} µs" if value >= 100 else f"{value:.1f} µs"
    if result.latency_source == "device_timer":
        return text + " (timer)"
    return text + " (est.)" if result.latency_source == "static_estimate" else text


def _status_cell(result: Result) -> str:
    if result.status == "pass":
        return "pass"
    kind = (result.failure or {}).get("kind")
    text = result.status.upper() + (f" {kind}" if kind else "")
    return text + "*" if result.partial else text


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- real time and noise (below the table) ---------------------------------------------------------------
def format_realtime(results: Sequence[Result]) -> list[str]:
    """The real-time table: per result, latency p99 + one beat over the link against 60 and 350 bpm."""
    rows = []
    flags = []
    for result in results:
        rt = result.realtime or {}
        if not rt.get("source"):
            continue
        est = " (est.)" if rt["source"] == "static_estimate" else ""
        rates = rt.get("rates") or {}
        max_bpm = rt.get("max_bpm")
        keeps_up = (rates.get("350") or {}).get("keeps_up")
        rows.append([
            result.name,
            f"{rt['latency_s'] * 1e3:,.2f} ms{est}",
            f"{rt['link_s_per_beat'] * 1e3:.2f} ms",
            _percent((rates.get("60") or {}).get("duty_cycle")),
            _percent((rates.get("350") or {}).get("duty_cycle")),
            ("–" if max_bpm is None else f"{max_bpm:,.0f}{est}") + ("" if keeps_up is not False else " ⚑"),
        ])
        if rt.get("flag"):
            flags += textwrap.wrap(f"⚑ {result.name}: {rt['flag']}", TABLE_WIDTH, subsequent_indent="    ")
    if not rows:
        return []
    header = ["real time", "latency p99", "link/beat", "duty@60bpm", "duty@350bpm", "max bpm"]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    widths[0] = min(widths[0], 40)

    def line(cells: list[str]) -> str:
        return "  ".join(_clip(c, widths[i]).ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    out = ["", line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    out.append("duty = (latency p99 + receiving one beat over the profile's link) ÷ beat interval (1 s at 60 bpm, "
               "171 ms at 350)")
    out.append("max bpm = the highest heart rate sustained; ⚑ = cannot keep up at 350 bpm (flagged, not failed)")
    return out + flags


def format_noise(results: Sequence[Result]) -> list[str]:
    """One compact line per result: the metric at each swept SNR (two digits; results.json has them all)
    and the SNR where it falls below 90 % of clean."""
    out = []
    for result in results:
        noise = result.noise or {}
        if noise.get("spec"):
            out.append(f"noise: {result.name} ran with --noise {noise['spec']} (NSTDB SNR, seed {noise.get('seed')}); "
                       "its figures are under noise and not gated")
        sweep = noise.get("sweep")
        if not sweep:
            continue
        metric = sweep.get("metric", "macro_f1")
        parts = [f"{_clip(result.name, 30)}  clean {_short((sweep.get('clean') or {}).get(metric))}"]
        for name, curve in (sweep.get("curves") or {}).items():
            values = " ".join(_short(p.get(metric)) for p in curve.get("points") or [])
            snr90 = curve.get("snr90_db")
            if snr90 is not None:
                where = f"{snr90:.1f}dB"
            elif curve.get("snr90_at_grid_db") is not None:
                where = f">{curve['snr90_at_grid_db']:g}dB"
            else:
                points = curve.get("points") or []
                where = f"<{points[-1]['snr_db']:g}dB" if points else "–"
            parts.append(f"{name} {values} 90%@{where}")
        out.append("  ".join(parts))
    sweeps = [r.noise["sweep"] for r in results if (r.noise or {}).get("sweep")]
    if sweeps:
        snrs = "/".join(f"{s:g}" for s in sweeps[0].get("snr_db") or [])
        metrics = {sweep.get("metric") for sweep in sweeps}
        metric = {frozenset({"macro_f1"}): "macro-F1", frozenset({"f1"}): "anomaly F1"}.get(
            frozenset(metrics), "macro-F1 (autoencoders: anomaly F1)")
        out[:0] = ["", f"noise sweep: {metric} at {snrs} dB (NSTDB SNR); 90%@ = SNR below 90 % of clean"]
    return out


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _short(value: float | None) -> str:
    """.71 for 0.712: two digits, no leading zero, so two curves fit on one line."""
    if value is None:
        return "–"
    return f"{value:.2f}"[1:] if 0 <= value < 0.995 else f"{value:.1f}"


# -- summary.md ------------------------------------------------------------------------------------------
_GATE_MARK = {"regressed": "❌", "improved": "⬆️", "within_noise": "≈", "not_compared": "–", "pass": "✅"}


def format_markdown(results: Sequence[Result], *, partial_note: str | None = None,
                    links: dict[str, str] | None = None, quarantined: Sequence[dict] = ()) -> str:
    """The run's summary as GitHub-flavoured Markdown: headline, table, gate lines, links to the artefacts.

    Short enough for a CI job summary or a pull-request comment: one table row per model × board and one
    gate line per figure that did not simply pass (regressed, improved, within noise, not compared).
    """
    header, rows = summary_cells(results)
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "error")}
    partial = partial_note or ("some runs stopped early" if any(r.partial for r in results) else None)
    verdict = "✅" if counts["fail"] + counts["error"] == 0 and not partial else "❌"
    lines = [f"### {verdict} hil-bench: {len(results)} model × board runs — {counts['pass']} pass, "
             f"{counts['fail']} fail, {counts['error']} error" + (" (partial run)" if partial else ""), ""]
    if partial:
        lines += [f"> **Partial run:** {partial}; figures marked * cover only the verified beats.", ""]
    for q in quarantined:  # several boards (harness/boards/farm.py): one that failed twice was left out
        lines += [f"> **Quarantined board:** {q.get('device')} ({q.get('reason')}); the run went on without it.", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if i in (3, 4, 5, 6, 7, 8) else "---" for i in range(len(header))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(cell) for cell in row) + " |")
    lines += ["", LEGEND.replace("\n", "; "), "", "**Gate**", ""]
    lines += _gate_lines(results)
    if links:
        lines += ["", " · ".join(f"[{label}]({href})" for label, href in links.items())]
    return "\n".join(lines) + "\n"


def _gate_lines(results: Sequence[Result]) -> list[str]:
    out = []
    for result in results:
        entries = [g for g in (getattr(result, "gate", None) or []) if isinstance(g, dict)]
        if entries:
            shown = [g for g in entries if g.get("outcome") != "pass"]
            passed = len(entries) - len(shown)
            out.append(f"- {result.name}: {passed} of {len(entries)} figures pass")
            for g in shown:
                mark = _GATE_MARK.get(str(g.get("outcome")), "?")
                text = g.get("line") or f"{g.get('metric')}: {g.get('old')} → {g.get('new')} ({g.get('outcome')})"
                out.append(f"  - {mark} {_md_cell(str(text))}")
        elif result.regressions:
            out += [f"- ❌ {_md_cell(line)}" for line in result.regressions]
        elif result.status == "pass":
            out.append(f"- {result.name}: no regression against the baseline (or no baseline for "
                       f"{result.profile})")
        else:
            out.append(f"- {result.name}: not gated, the run {result.status}ed: {_md_cell(result.failure_line)}")
    return out or ["- no results"]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_summary_md(path: str | os.PathLike, results: Sequence[Result], **kwargs) -> Path:
    """Write `format_markdown(results, **kwargs)` to `path`, atomically."""
    text = format_markdown(results, **kwargs).encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(text))
