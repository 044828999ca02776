"""The candidate workflow's paired table: committed model vs candidate, per board, as text and Markdown.

Reads only the Results of one session (the candidate's `gate` outcomes were computed by
gate.compare_candidate, paired on the same beats), so the terminal table and `out/compare.md` (ready for a
pull-request comment or a CI job summary) always say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

from .baseline import format_value
from ..bench.results import Result


def verdict(outcomes: Sequence[dict]) -> str:
    kinds = {o.get("outcome") for o in outcomes}
    if "regressed" in kinds:
        return "REGRESSED: the candidate is worse than the committed model"
    if "not_compared" in kinds and not any(o.get("outcome") == "improved" for o in outcomes):
        return "INCONCLUSIVE: some figures could not be compared"
    if "improved" in kinds:
        return "IMPROVED: better on some figures, worse on none"
    return "NO SIGNIFICANT CHANGE: every difference is within tolerance or within noise"


def _pairs(results: Sequence[Result], candidates: dict[str, str]) -> list[tuple[Result | None, Result]]:
    pairs = []
    for result in results:
        base = candidates.get(result.model)
        if base is None:
            continue
        committed = next((r for r in results if r.model == base and r.device == result.device), None)
        pairs.append((committed, result))
    return pairs


def _rows(outcomes: Sequence[dict]) -> list[list[str]]:
    rows = []
    for o in outcomes:
        metric = str(o.get("metric"))
        if o.get("outcome") == "not_compared":
            rows.append([metric, "", "", "", "", "", f"not compared: {o.get('reason')}"])
            continue
        old, new = o.get("old"), o.get("new")
        delta = (new - old) if isinstance(old, (int, float)) and isinstance(new, (int, float)) \
            and not isinstance(old, bool) else None
        ci = o.get("ci95")
        p = o.get("p_value")
        rows.append([
            metric, format_value(metric, old), format_value(metric, new),
            "" if delta is None else format_value(metric, delta, signed=True),
            "" if not ci else
            f"[{format_value(metric, ci[0], signed=True)}, {format_value(metric, ci[1], signed=True)}]",
            "" if p is None else f"{p:.2g}",
            str(o.get("outcome")),
        ])
    return rows


HEADER = ["figure", "committed", "candidate", "Δ", "95% CI of Δ", "McNemar p", "outcome"]


def _unit(outcomes: Sequence[dict]) -> str:
    units = sorted({str(o.get("ci_unit")) for o in outcomes if o.get("ci_unit")})
    return ", ".join(units) if units else "none"


def text(results: Sequence[Result], candidates: dict[str, str]) -> str:
    out = []
    for committed, cand in _pairs(results, candidates):
        out.append(f"candidate {cand.provenance.get('model_path', cand.model)} vs committed "
                   f"{committed.model if committed else '?'} on {cand.device} "
                   f"({(cand.provenance.get('beat_set') or {}).get('beats', '?')} beats, paired)")
        rows = [HEADER] + _rows(cand.gate)
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        for i, row in enumerate(rows):
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                out.append("  " + "  ".join("-" * w for w in widths))
        out.append(f"  bit-exactness: committed {committed.bit_exact_summary if committed else '?'}; "
                   f"candidate {cand.bit_exact_summary}")
        out.append(f"  95% CI: bootstrap over {_unit(cand.gate)}; McNemar: exact test on per-beat right/wrong pairs")
        out.append(f"  verdict: {verdict(cand.gate)}")
    return "\n".join(out)


def markdown(results: Sequence[Result], candidates: dict[str, str]) -> str:
    out = ["# Candidate model vs committed model", ""]
    for committed, cand in _pairs(results, candidates):
        bs = cand.provenance.get("beat_set") or {}
        out += [f"## {cand.model} on {cand.device}", "",
                f"**Verdict: {verdict(cand.gate)}**", "",
                f"- candidate: `{cand.provenance.get('model_path', '?')}` (sha256 "
                f"`{str(cand.provenance.get('model_sha256', ''))[:12]}`)",
                f"- committed: `{committed.provenance.get('model_path', '?') if committed else '?'}` (sha256 "
                f"`{str(committed.provenance.get('model_sha256', ''))[:12] if committed else '?'}`)",
                f"- beats: {bs.get('beats', '?')} of records {', '.join(bs.get('records') or [])} "
                f"(fingerprint `{str(bs.get('fingerprint', ''))[:12]}`), the same for both, paired beat by beat",
                f"- bit-exactness: committed {committed.bit_exact_summary if committed else '?'}; "
                f"candidate {cand.bit_exact_summary}",
                "- accuracy: McNemar's exact test on per-beat right/wrong pairs; 95 % intervals of each change: "
                f"bootstrap over {_unit(cand.gate)}", ""]
        out.append("| " + " | ".join(HEADER) + " |")
        out.append("|" + "---|" * len(HEADER))
        for row in _rows(cand.gate):
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        out.append("")
    return "\n".join(out) + "\n"
