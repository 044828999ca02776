"""The HTML report of a run: one self-contained page (plots inline as PNG) people look at.

`render(results, ...)` returns the page; `write(path, ...)` writes it atomically. The page holds the
summary table (the terminal's figures), the gate outcomes, per model × board the confusion matrix,
per-class Se/+P, the latency spread (device cycles only: a static estimate gets a sentence, never a
histogram), arena and model bytes against the profile's limits, bit-exactness and, on a mismatch, the
first differing beat's ECG with the localised layer; across models accuracy and macro-F1 against size,
latency and arena with the Pareto front, per-record accuracy; trends over past runs from the history; and
the reproducibility manifest. matplotlib draws with the Agg backend (no display needed).

`python -m harness.report.html [OUT_DIR]` (what `make report` runs) renders the page and summary.md again
from OUT_DIR/results.json and the history, with trend plots.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import history as history_mod
from . import outputs as report
from ..errors import HarnessError
from ..bench.results import Result

DPI = 80
_GATE_CLASS = {"pass": "ok", "improved": "ok", "within_noise": "note", "regressed": "bad", "not_compared": "note"}


# -- entry points ------------------------------------------------------------------------------------------
def write(path: str | Path, results: Sequence[Result], **kwargs: Any) -> Path:
    """Render the page and write it atomically to `path` (see `render` for the arguments)."""
    page = render(results, **kwargs).encode("utf-8")
    return report.atomic_write(path, lambda fh: fh.write(page))


def render(results: Sequence[Result], *, manifest: dict | None = None, session: dict | None = None,
           partial_note: str | None = None, history_rows: Sequence[dict] | None = None,
           notes: Sequence[str] = (), links: dict[str, str] | None = None) -> str:
    """The whole page as text.

    `partial_note`: why the run is incomplete (then the page says so at the top); `history_rows`:
    history.load(...) for trend plots; `notes`: warnings to show (e.g. an unreadable history);
    `links`: {label: relative path} of the run's other artefacts.
    """
    plt = _pyplot()
    session = session or {}
    partial = partial_note or (
        "some runs stopped early: their figures cover only the verified beats" if any(r.partial for r in results)
        else None)
    title = "hil-bench report" + (" (partial run)" if partial else "")
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>", _intro(results, manifest, session, links)]
    if partial:
        parts.append(f"<p class='banner'>Partial run: {_e(partial)}. Figures marked * are incomplete.</p>")
    for note in notes:
        parts.append(f"<p class='warn'>{_e(note)}</p>")
    parts += ["<h2 id='summary'>Summary</h2>", _summary_table(results),
              "<h2 id='gate'>Gate</h2>", _gate_section(results),
              "<h2 id='across'>Across models</h2>", _across_section(plt, results),
              "<h2 id='runs'>Per model × board</h2>"]
    parts += [_result_section(plt, result) for result in results]
    if history_rows is not None:
        parts += ["<h2 id='trends'>Trends over runs</h2>", _trends_section(plt, results, history_rows)]
    parts += ["<h2 id='manifest'>Reproducibility manifest</h2>", _manifest_section(manifest)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- page parts --------------------------------------------------------------------------------------------
def _intro(results: Sequence[Result], manifest: dict | None, session: dict, links: dict[str, str] | None) -> str:
    harness = (manifest or {}).get("harness") or {}
    commit = harness.get("git_commit")
    commit_text = "unknown commit" if not commit else commit[:12] + (" (dirty)" if harness.get("git_dirty") else "")
    started = min((r.provenance.get("started_at") for r in results if r.provenance.get("started_at")), default=None)
    finished = max((r.provenance.get("finished_at") for r in results if r.provenance.get("finished_at")),
                   default=None)
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "error")}
    line = (f"{len(results)} model × board runs: {counts['pass']} pass, {counts['fail']} fail, "
            f"{counts['error']} error. harness {harness.get('version', '?')} at {commit_text}; "
            f"{started or '?'} → {finished or '?'} (UTC).")
    if session.get("records"):
        line += f" Records: {', '.join(map(str, session['records']))}."
    out = f"<p>{_e(line)}</p>"
    if links:
        out += "<p>" + " · ".join(f"<a href='{_e(href)}'>{_e(label)}</a>" for label, href in links.items()) + "</p>"
    return out


def _summary_table(results: Sequence[Result]) -> str:
    header, rows = report.summary_cells(results)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    legend = report.LEGEND.replace("\n", "; ")
    if any(r.partial for r in results):
        legend += " " + report.PARTIAL_NOTE
    return (f"<table class='summary'><tr>{''.join(f'<th>{_e(h)}</th>' for h in header)}</tr>{body}</table>"
            f"<p class='small'>{_e(legend)}</p>")


def gate_entries(result: Result) -> list[dict]:
    """Result.gate (helper "gate" owns it) read defensively: a list of dicts, else []."""
    entries = getattr(result, "gate", None)
    return [g for g in entries if isinstance(g, dict)] if isinstance(entries, list) else []


_OUTCOMES = ("pass", "improved", "within_noise", "regressed", "not_compared")


def _gate_section(results: Sequence[Result]) -> str:
    """Per run one line of outcome counts and its non-pass lines; every compared figure folded below."""
    summary, detail, fallback = [], [], []
    for result in results:
        entries = gate_entries(result)
        if not entries:
            fallback.append((result.name, list(result.regressions)))
            continue
        counts = [sum(g.get("outcome") == outcome for g in entries) for outcome in _OUTCOMES]
        notable = "<br>".join(f"<span class='{_GATE_CLASS.get(str(g.get('outcome')), '')}'>{_e(g.get('line') or '')}"
                              "</span>" for g in entries if g.get("outcome") != "pass")
        summary.append(f"<tr><td>{_e(result.name)}</td>" + "".join(
            f"<td class='{_GATE_CLASS[o] if n and o != 'pass' else ''}'>{n}</td>" for o, n in zip(_OUTCOMES, counts))
            + f"<td class='small'>{notable or 'every figure passes'}</td></tr>")
        for g in entries:
            ci = g.get("ci95")
            cls = _GATE_CLASS.get(str(g.get("outcome")), "")
            cells = [result.name, g.get("metric"), g.get("outcome"), _fmt(g.get("old")), _fmt(g.get("new")),
                     _fmt(g.get("limit")), _fmt(g.get("p_value")),
                     f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "–",
                     g.get("reason") or ""]
            detail.append("<tr>" + "".join(f"<td class='{cls}'>{_e(c)}</td>" if i == 2 else f"<td>{_e(c)}</td>"
                                           for i, c in enumerate(cells)) + "</tr>")
    out = ""
    if summary:
        out += ("<table class='gate'><tr><th>run</th>" + "".join(f"<th>{o.replace('_', ' ')}</th>" for o in _OUTCOMES)
                + "<th>every outcome that is not a plain pass</th></tr>" + "".join(summary) + "</table>")
        out += (f"<details><summary>every compared figure ({len(detail)})</summary><table class='gate'><tr>"
                "<th>run</th><th>metric</th><th>outcome</th><th>old</th><th>new</th><th>limit</th><th>p</th>"
                "<th>95 % CI</th><th>why</th></tr>" + "".join(detail) + "</table></details>")
    if fallback:
        out += "<ul>"
        for name, lines in fallback:
            if lines:
                out += "".join(f"<li class='bad'>regressed: {_e(line)}</li>" for line in lines)
            else:
                out += (f"<li>{_e(name)}: no gate figures recorded (no baseline for its profile, the run did "
                        "not pass, or the baselines were being updated)</li>")
        out += "</ul>"
    return out


def _result_section(plt, result: Result) -> str:
    status = result.status.upper() + (" (partial*)" if result.partial else "")
    cls = {"pass": "ok", "fail": "bad", "error": "bad"}[result.status]
    out = [f"<section><h3 id='{_e(_anchor(result.name))}'>{_e(result.name)} "
           f"<span class='{cls}'>{_e(status)}</span></h3>",
           f"<p class='small'>profile {_e(result.profile)} · task {_e(result.task)}</p>"]
    if result.failure_line:
        out.append(f"<p class='bad mono'>{_e(result.failure_line)}</p>")
    out.append(_facts_table(result))
    images = [_confusion_plot(plt, result), _class_bars(plt, result), _latency_plot(plt, result),
              _noise_plot(plt, result)]
    out.append("<div class='plots'>" + "".join(img for img in images if img) + "</div>")
    out.append(_mismatch_block(plt, result))
    out.append("</section>")
    return "\n".join(out)


def _facts_table(result: Result) -> str:
    rows: list[tuple[str, str]] = []
    beats = result.beats or {}
    rows.append(("beats", f"{beats.get('verified', '?')} verified of {beats.get('total', '?')}"
                          f"{' (stopped early)' if result.partial else ''}; {beats.get('skipped_edge', 0)} "
                          "skipped at record edges"))
    be = result.bit_exact or {}
    ref = (result.provenance.get("reference") or {})
    ref_text = f"{be.get('reference') or ref.get('name', '?')} {ref.get('version') or ''}".strip()
    if result.is_bit_exact is None:
        exact = "not judged (no beats verified)"
    elif result.is_bit_exact:
        exact = f"✓ every output byte equals {ref_text}"
    else:
        exact = (f"✗ {be.get('mismatching_beats')} beats differ from {ref_text} (max |diff| "
                 f"{be.get('max_abs_diff')})")
    if be.get("summary") and result.partial:
        exact += f" ({be['summary']})"  # e.g. "bit-exact on 30 of 100 beats, incomplete"
    rows.append(("bit-exact", exact))
    cross = be.get("cross_check") or {}
    if cross.get("verdict"):
        rows.append(("cross-check", cross["verdict"]))
    fw = result.provenance.get("firmware") or {}
    if fw.get("chip") == "virtual":
        rows.append(("note", "the virtual board runs the same TFLM kernels as the host 'tflm' interpreter: "
                             "their agreement holds by construction and is no evidence about a real board"))
    rows.append(("latency", _latency_text(result)))
    memory = result.memory or {}
    rows.append(("arena", _budget(memory.get("arena_used_bytes"), memory.get("arena_limit_bytes")
                                  or memory.get("arena_size_bytes"), memory.get("arena_source"))))
    rows.append(("model bytes", _budget(memory.get("model_bytes"), memory.get("model_max_bytes"), None)))
    rt = getattr(result, "realtime", None) or {}
    if isinstance(rt, dict) and rt.get("max_bpm") is not None:
        rows.append(("real time", f"keeps up to {rt['max_bpm']:,.0f} bpm (latency p99 from {rt.get('source')} + "
                                  "one beat over the link)" + (f"; {rt['flag']}" if rt.get("flag") else "")))
    tp = result.throughput or {}
    if tp.get("beats_per_s"):
        rows.append(("throughput", f"{tp['beats_per_s']:,.1f} beats/s over the link (host wall time, "
                                   f"{tp.get('wall_s', 0):.2f} s)"))
    return ("<table class='facts'>" + "".join(f"<tr><th>{_e(k)}</th><td>{v if k in ('arena', 'model bytes') else _e(v)}"
                                              "</td></tr>" for k, v in rows) + "</table>")


def _latency_text(result: Result) -> str:
    source = result.latency_source
    p50, p99 = result.latency_us("median"), result.latency_us("p99")
    host = ((result.host_time or {}).get("invoke_us") or {}).get("median")
    host_text = f"; host wall time of the invoke p50 {host:,.1f} µs (this machine, not device latency)" if host else ""
    if source == "static_estimate":
        return (f"static cost-model estimate, not measured: {p50:,.0f} µs per beat (no histogram: an estimate "
                f"has no spread){host_text}" if p50 is not None else "static estimate unavailable")
    if source == "device_cycles":
        mhz = (result.latency or {}).get("cpu_mhz")
        if not mhz:
            cycles = (result.latency or {}).get("cycles") or {}
            return (f"device cycles (the board reports no clock, so not converted to µs): p50 "
                    f"{_fmt(cycles.get('median'))}, p99 {_fmt(cycles.get('p99'))}")
        return (f"device cycles ÷ {mhz} MHz: p50 {_us(p50)}, p99 {_us(p99)} over "
                f"{((result.latency or {}).get('us') or {}).get('n', '?')} beats after warm-up")
    return "no latency figures"


def _budget(used: int | None, limit: int | None, source: str | None) -> str:
    if used is None:
        return "–"
    text = f"{used:,} B ({used / 1024:.1f} KiB)"
    if limit:
        share = used / limit
        cls = "bad" if share > 1 else ""
        text += (f" of {limit:,} B allowed by the profile ({share:.0%}) "
                 f"<span class='meter'><span class='{cls}' style='width:{min(share, 1) * 100:.1f}%'></span></span>")
    if source:
        text += f" <span class='small'>({_e(source)})</span>"
    return text


def _mismatch_block(plt, result: Result) -> str:
    be = result.bit_exact or {}
    first = be.get("first_mismatch")
    if not first:
        return ""
    out = ["<h4>First differing beat</h4>",
           f"<p>beat {_e(first.get('beat'))} (record {_e(first.get('record'))}, sample {_e(first.get('sample'))}, "
           f"symbol {_e(first.get('symbol'))}): output {_e(first.get('output_index'))} is {_e(first.get('device'))} "
           f"on the device, {_e(first.get('reference'))} on the reference.</p>"]
    loc = be.get("localisation") or {}
    if loc.get("summary"):
        out.append(f"<p class='mono'>Localised: {_e(loc['summary'])}</p>")
    img = _ecg_plot(plt, result, first)
    out.append(img or "<p class='small'>The ECG of that beat could not be read from the run's data "
                      "directory, so it is not plotted.</p>")
    return "\n".join(out)


def _across_section(plt, results: Sequence[Result]) -> str:
    out = []
    pareto = _pareto_plot(plt, results)
    out.append(pareto or "<p>Fewer than two classifier runs with figures: no comparison across models.</p>")
    if any(r.task == "autoencoder" for r in results):
        out.append("<p class='small'>Autoencoders are left out of these plots: their accuracy is normal/abnormal "
                   "detection, not beat classification.</p>")
    per_record = _per_record_plot(plt, results)
    if per_record:
        out.append("<h3>Accuracy per record</h3>" + per_record)
    return "\n".join(out)


def _trends_section(plt, results: Sequence[Result], rows: Sequence[dict]) -> str:
    grouped = history_mod.trends(rows)
    wanted = {(r.model, r.profile) for r in results}
    pairs = [pair for pair in grouped if not wanted or pair in wanted]
    out = []
    for pair in pairs:
        img = _trend_plot(plt, pair, grouped[pair])
        if img:
            out.append(f"<h3>{_e(pair[0])} on profile {_e(pair[1])}</h3>{img}")
    return "\n".join(out) or "<p>Fewer than two runs in the history for these models: no trend yet.</p>"


def _manifest_section(manifest: dict | None) -> str:
    if not manifest:
        return "<p>No manifest recorded.</p>"
    return f"<div class='scroll'>{_tree(manifest)}</div>"


def _tree(value: Any) -> str:
    """Nested dicts as nested tables; dicts of alike dicts and lists of dicts as one table with columns."""
    if isinstance(value, dict):
        if not value:
            return "–"
        rows = list(value.values())
        if len(rows) > 1 and all(isinstance(v, dict) and v for v in rows):
            return _columns([{"name": k, **v} for k, v in value.items()])
        return ("<table class='tree'>" + "".join(f"<tr><th>{_e(k)}</th><td>{_tree(v)}</td></tr>"
                                                for k, v in value.items()) + "</table>")
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return _columns(value)
        return _e(", ".join(str(v) for v in value)) if value else "–"
    if value is None:
        return "<span class='small'>unknown</span>"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"<span class='mono'>{_e(value)}</span>"


def _columns(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_tree(row.get(k))}</td>" for k in keys) + "</tr>" for row in rows)
    return f"<table class='tree'><tr>{head}</tr>{body}</table>"


# -- plots -------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "figure.dpi": DPI, "savefig.dpi": DPI})
    return plt


def _img(plt, fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


def _confusion_plot(plt, result: Result) -> str | None:
    acc = result.accuracy or {}
    if result.task == "autoencoder":
        matrix = (acc.get("anomaly") or {}).get("confusion")
        labels = ["normal", "abnormal"]
    else:
        matrix, labels = acc.get("confusion"), acc.get("labels")
    if not matrix or not labels:
        return None
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 1.0 + 0.45 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 0.6, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("annotated")
    ax.set_title("confusion (counts; colour = row share)")
    return _img(plt, fig, f"confusion matrix of {result.name}")


def _class_bars(plt, result: Result) -> str | None:
    acc = result.accuracy or {}
    if result.task == "autoencoder":
        anomaly = acc.get("anomaly") or {}
        names, groups = ["abnormal"], {"Se": [anomaly.get("se")], "Sp": [anomaly.get("sp")],
                                       "+P": [anomaly.get("ppv")]}
    else:
        per = acc.get("per_class") or {}
        names = [label for label in acc.get("labels") or per if per.get(label, {}).get("support")
                 or per.get(label, {}).get("predicted")]
        groups = {"Se": [per[n].get("se") for n in names], "+P": [per[n].get("ppv") for n in names]}
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * len(names), 2.6))
    width = 0.8 / len(groups)
    for k, (label, values) in enumerate(groups.items()):
        xs = [i + (k - (len(groups) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [v or 0 for v in values], width, label=label)
        for x, v in zip(xs, values):
            if v is None:
                ax.text(x, 0.02, "n/a", ha="center", fontsize=6, rotation=90)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_title("per-class Se and +P" if result.task == "classifier" else "anomaly detection")
    ax.legend(fontsize=7, loc="lower right")
    return _img(plt, fig, f"per-class sensitivity and positive predictivity of {result.name}")


def _latency_plot(plt, result: Result) -> str | None:
    latency = result.latency or {}
    hist = latency.get("histogram_cycles") or {}
    if latency.get("source") != "device_cycles" or not hist.get("counts"):
        return None  # an estimate has no spread: _latency_text says so in words
    mhz = latency.get("cpu_mhz")
    unit = mhz or 1  # cpu_mhz 0: no meaningful clock, so the spread stays in cycles
    edges = [e / unit for e in hist["edges"]]
    widths = [b - a for a, b in zip(edges, edges[1:])]
    fig, ax = plt.subplots(figsize=(3.8, 2.6))
    ax.bar(edges[:-1], hist["counts"], widths, align="edge", color="#888")
    for stat, colour in (("median", "tab:blue"), ("p99", "tab:red")):
        value = result.latency_us(stat) if mhz else ((latency.get("cycles") or {}).get(stat))
        if value is not None:
            ax.axvline(value, color=colour, linestyle="--",
                       label=f"{'p50' if stat == 'median' else stat} {value:,.1f} {'µs' if mhz else 'cycles'}")
    ax.set_xlabel(f"µs per beat (device cycles ÷ {mhz} MHz)" if mhz else "device cycles per beat")
    ax.set_ylabel("beats")
    ax.set_title(f"latency, {hist.get('n')} beats after warm-up")
    ax.legend(fontsize=7)
    return _img(plt, fig, f"latency histogram of {result.name}")


def _noise_plot(plt, result: Result) -> str | None:
    """Accuracy and the sweep's metric against SNR, one colour per noise type (--noise-sweep)."""
    sweep = (getattr(result, "noise", None) or {}).get("sweep") or {}
    curves = sweep.get("curves") or {}
    if not curves:
        return None
    metric = sweep.get("metric", "macro_f1")
    clean = sweep.get("clean") or {}
    fig, ax = plt.subplots(figsize=(3.8, 2.6))
    for k, (name, curve) in enumerate(sorted(curves.items())):
        points = sorted(curve.get("points") or [], key=lambda p: p["snr_db"])
        colour = f"C{k}"
        snrs = [p["snr_db"] for p in points]
        ax.plot(snrs, [p.get(metric) for p in points], "o-", color=colour, label=f"{name} {metric}")
        ax.plot(snrs, [p.get("accuracy") for p in points], "s:", color=colour, label=f"{name} accuracy")
        if curve.get("snr90_db") is not None:
            ax.axvline(curve["snr90_db"], color=colour, linestyle="--", linewidth=0.8)
    if clean.get(metric) is not None:
        ax.axhline(clean[metric], color="black", linewidth=0.8, label=f"clean {metric}")
        ax.axhline(0.9 * clean[metric], color="grey", linestyle="--", linewidth=0.8, label="90 % of clean")
    ax.set_xlabel("SNR, dB (NSTDB); dashed: metric < 90 % of clean")
    ax.set_ylim(0, 1.05)
    ax.invert_xaxis()  # noisier to the right, as the sweep runs
    ax.set_title("under NSTDB noise")
    ax.legend(fontsize=6, loc="lower left")
    return _img(plt, fig, f"accuracy against noise of {result.name}")


def _ecg_plot(plt, result: Result, first: dict) -> str | None:
    from ..bench import data

    data_dir = result.provenance.get("data_dir")
    if not data_dir:
        return None
    try:
        record = data.load_record(data_dir, str(first.get("record")))
    except HarnessError:
        return None
    sample = int(first.get("sample", 0))
    window = first.get("window") or {}
    start = int(window.get("start", sample - 180))
    end = int(window.get("end", sample + 180))
    margin = max((end - start) // 4, 90)
    lo, hi = max(start - margin, 0), min(end + margin, record.n_samples)
    channel = int(window.get("channel", 0))
    import numpy as np

    t = (np.arange(lo, hi) - sample) / record.fs
    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    ax.plot(t, record.signal[lo:hi, channel], color="black", linewidth=0.8)
    ax.axvspan((start - sample) / record.fs, (end - sample) / record.fs, color="tab:orange", alpha=0.15,
               label="model input window")
    ax.axvline(0, color="tab:red", linestyle="--", linewidth=1, label=f"beat ({first.get('symbol')})")
    ax.set_xlabel(f"s from sample {sample} of record {record.name}")
    ax.set_ylabel(f"{record.channels[channel]} (mV)")
    ax.set_title("ECG around the first differing beat")
    ax.legend(fontsize=7, loc="upper right")
    return _img(plt, fig, f"ECG window of the first differing beat of {result.name}")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: smaller or equal x and larger or equal y, one strictly."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _pareto_plot(plt, results: Sequence[Result]) -> str | None:
    runs = [r for r in results if r.task == "classifier" and r.accuracy_value is not None]
    if len(runs) < 2:
        return None
    axes_x = [("model bytes", lambda r: (r.memory or {}).get("model_bytes")),
              ("p50 latency (µs)", lambda r: r.latency_us("median")),
              ("arena used (bytes)", lambda r: r.arena_used_bytes)]
    axes_y = [("accuracy", lambda r: r.accuracy_value), ("macro-F1", lambda r: r.macro_f1_value)]
    estimated = any(r.latency_source == "static_estimate" for r in runs)
    fig, grid = plt.subplots(len(axes_y), len(axes_x), figsize=(13, 6.6), squeeze=False)
    for row, (y_name, y_of) in enumerate(axes_y):
        for col, (x_name, x_of) in enumerate(axes_x):
            ax = grid[row][col]
            pts = [(x_of(r), y_of(r), r) for r in runs if x_of(r) is not None and y_of(r) is not None]
            if not pts:
                ax.set_axis_off()
                continue
            front = set(pareto_front([(x, y) for x, y, _ in pts]))
            for i, (x, y, r) in enumerate(pts):
                hollow = col == 1 and r.latency_source == "static_estimate"
                colour = "tab:red" if i in front else "tab:gray"
                ax.scatter([x], [y], s=28, facecolors="none" if hollow else colour, edgecolors=colour, zorder=3)
                ax.annotate(r.model if len({p[2].device for p in pts}) == 1 else r.name, (x, y), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            ordered = [pts[i] for i in sorted(front, key=lambda i: pts[i][0])]
            ax.step([p[0] for p in ordered], [p[1] for p in ordered], where="post", color="tab:red", linewidth=1)
            ax.margins(x=0.15, y=0.12)
            if col == 1 and estimated:
                x_name += " ○ = estimate"
            ax.set_xlabel(x_name)
            ax.set_ylabel(y_name)
            ax.grid(alpha=0.3)
    fig.suptitle("accuracy and macro-F1 against size, latency and arena: red = Pareto front (nothing is both "
                 "smaller and more accurate)")
    fig.tight_layout()
    return _img(plt, fig, "accuracy and macro-F1 against model bytes, latency and arena, Pareto front marked")


def _per_record_plot(plt, results: Sequence[Result]) -> str | None:
    # conformance models classify nothing: their bit-exactness is their whole verdict
    runs = [r for r in results if any((c or {}).get("classified") for c in (r.per_record or {}).values())]
    if not runs:
        return None
    records = sorted({name for r in runs for name in r.per_record}, key=lambda n: (len(n), n))
    import numpy as np

    matrix = np.full((len(runs), len(records)), np.nan)
    for i, r in enumerate(runs):
        for j, name in enumerate(records):
            counts = r.per_record.get(name) or {}
            if counts.get("classified"):
                matrix[i, j] = counts["correct"] / counts["classified"]
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.5 * len(records), 14), 0.9 + 0.35 * len(runs)))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=np.nanmin(matrix) if np.isfinite(matrix).any()
                      else 0, vmax=1, aspect="auto")
    if len(records) <= 24:
        for i in range(len(runs)):
            for j in range(len(records)):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", fontsize=6,
                            color="black" if matrix[i, j] > 0.7 else "white")
    ax.set_xticks(range(len(records)), records, rotation=90 if len(records) > 12 else 0)
    ax.set_yticks(range(len(runs)), [r.name for r in runs])
    ax.set_xlabel("record")
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax.set_title("accuracy per record (autoencoders: normal/abnormal calls)")
    return _img(plt, fig, "accuracy per record")


def _trend_plot(plt, pair: tuple[str, str], rows: Sequence[dict]) -> str | None:
    rows = list(rows)[-50:]
    if len({row["run_id"] for row in rows}) < 2:
        return None
    series = [("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("latency_p50_us", "p50 latency (µs)"),
              ("arena_used_bytes", "arena (bytes)"), ("bit_exact", "bit-exact")]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(series), figsize=(11, 1.9))
    xs = list(range(1, len(rows) + 1))
    for ax, (key, label) in zip(axes, series):
        values = [row.get(key) for row in rows]
        points = [(x, v) for x, v in zip(xs, values) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], color="tab:blue", linewidth=1)
            for x, row in zip(xs, rows):
                v = row.get(key)
                if v is None:
                    continue
                hollow = key == "latency_p50_us" and row.get("latency_source") == "static_estimate"
                ax.scatter([x], [v], s=14, facecolors="none" if hollow else "tab:blue", edgecolors="tab:blue",
                           zorder=3)
        else:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "bit_exact":
            ax.set_ylim(-0.2, 1.2)
            ax.set_yticks([0, 1], ["no", "yes"])
        ax.set_title(label + (" ○ = est." if key == "latency_p50_us" and any(
            row.get("latency_source") == "static_estimate" for row in rows) else ""))
        ax.set_xlabel("run")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{pair[0]} on {pair[1]}: {len(rows)} runs, {rows[0]['recorded_at']} → {rows[-1]['recorded_at']}")
    fig.tight_layout()
    return _img(plt, fig, f"trends of {pair[0]} on {pair[1]}")


# -- helpers -----------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(name: str) -> str:
    return "run-" + "".join(c if c.isalnum() else "-" for c in name)


def _us(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f} µs"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1150px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;
vertical-align:top}th{background:#f3f3f3}table.summary td{font-family:ui-monospace,monospace;white-space:nowrap}
.ok{color:#14692a}.bad{color:#b00020;font-weight:600}.note{color:#7a5d00}.warn{background:#fff4d6;padding:.4em}
.banner{background:#ffe0e0;border:1px solid #b00020;padding:.5em;font-weight:600}
.small{color:#666;font-size:12px}.mono{font-family:ui-monospace,monospace;font-size:12px}
section{border-top:2px solid #ddd;margin-top:1.2em}.plots img{margin:4px 8px 4px 0;vertical-align:top}
.meter{display:inline-block;width:120px;height:9px;background:#eee;border:1px solid #aaa;vertical-align:middle}
.meter span{display:block;height:100%;background:#4a7}.meter span.bad{background:#b00020}
table.tree{margin:0}.scroll{overflow-x:auto}table.tree td{overflow-wrap:anywhere}
"""


# -- make report -------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.report.html",
                                     description="Render report.html and summary.md from a run's results.json, "
                                                 "with trend plots from the history.")
    parser.add_argument("out", nargs="?", default="out", help="the run's output directory (default out/)")
    parser.add_argument("--history", default=None, help="history database (default OUT/history.sqlite)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    history_path = Path(args.history) if args.history else out / "history.sqlite"
    try:
        document = read_document(out / "results.json")
        results = [Result.from_dict(item) for item in document["results"]]
        notes, rows = [], None
        try:
            rows = history_mod.load(history_path)
        except history_mod.HistoryError as err:
            notes.append(f"WARNING: {err}")
            print(f"WARNING: {err}", file=sys.stderr)
        written = write_reports(out, results, manifest=document.get("manifest"),
                                session=document.get("session") or {}, history_rows=rows, notes=notes,
                                partial_note=(document.get("session") or {}).get("partial"))
    except HarnessError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print("  ".join(f"{label}: {path}" for label, path in written.items()))
    return 0


def read_document(path: Path) -> dict:
    """results.json as a dict, checked the way report.read_results_json checks it."""
    report.read_results_json(path)  # raises HIL602 with one line on a bad file
    return json.loads(path.read_text(encoding="utf-8"))


def finish_run(out: Path, results: Sequence[Result], *, manifest: dict | None, session: dict,
               history_path: Path | None, partial_note: str | None = None) -> list[str]:
    """End of a session: append to the history, then write report.html and summary.md.

    Returns warning lines (an unusable history, a page that could not be drawn) for the terminal; none
    of them stops the run's own reports, and results.json and junit.xml are written before this runs.
    """
    notes: list[str] = []
    rows = None
    if history_path is not None:
        try:
            history_mod.append(history_path, results, manifest=manifest, partial=bool(partial_note),
                               exitstatus=session.get("exitstatus"))
            rows = history_mod.load(history_path)
        except history_mod.HistoryError as err:
            notes.append(f"WARNING: {err}")
    try:
        write_reports(out, results, manifest=manifest, session=session, history_rows=rows, notes=notes,
                      partial_note=partial_note)
    except HarnessError:
        raise  # an unwritable output directory is the user's to fix, like for results.json
    except Exception as exc:  # noqa: BLE001 - a drawing bug must not take the verdict and the other reports down
        notes.append(f"WARNING: HIL605 report.html and summary.md not written: {type(exc).__name__}: {exc} "
                     "-- fix: report it; results.json and junit.xml are complete")
    return notes


def write_reports(out: Path, results: Sequence[Result], *, manifest: dict | None, session: dict,
                  history_rows: Sequence[dict] | None, notes: Sequence[str] = (),
                  partial_note: str | None = None) -> dict[str, Path]:
    """report.html and summary.md into `out`, both atomic; returns {name: path}."""
    links = {"results.json": "results.json", "junit.xml": "junit.xml", "summary.md": "summary.md"}
    page = write(out / "report.html", results, manifest=manifest, session=session, partial_note=partial_note,
                 history_rows=history_rows, notes=notes, links=links)
    summary = report.write_summary_md(out / "summary.md", results, partial_note=partial_note,
                                      quarantined=(session or {}).get("quarantined") or (),
                                      links={"report.html": "report.html", "results.json": "results.json",
                                             "junit.xml": "junit.xml"})
    return {"report": page, "summary": summary}


if __name__ == "__main__":
    raise SystemExit(main())
