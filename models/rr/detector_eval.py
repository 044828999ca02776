"""rr_beat with R peaks a device would have: wfdb's XQRS detector instead of the annotated R peaks.

The committed rr_beat model (registry entry, INT8 file) is run on DS2 with every window and every rhythm
feature computed from the detector's R peaks (harness.bench.data.beat_windows on a copy of the record whose
R peaks are the detections). Detections are matched to the annotated beats within 150 ms (AAMI EC57's
tolerance, wfdb.processing.compare_annotations); a matched detection takes the annotated beat's label,
an unmatched detection (false positive) is counted with what the model called it, and an annotated beat
with no detection (missed) is counted as not classified: the per-class Se below count missed beats as
misses, not as absent. INT8 outputs come from harness.bench.reference.TFLiteReference (the bench's reference,
bit-exact with the board). No TensorFlow needed:

    python models/rr/detector_eval.py --mitdb ../shared/mitdb --out models/rr/detector.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import numpy as np  # noqa: E402

from harness.bench import data  # noqa: E402
from harness.bench.model import load_registry  # noqa: E402
from harness.bench.reference import TFLiteReference  # noqa: E402

TOLERANCE_S = 0.150


def detect(record: data.Record) -> np.ndarray:
    """XQRS QRS detections on MLII, moved to the local extremum within 100 ms like the annotations."""
    from wfdb import processing

    sig = record.signal[:, 0].astype(np.float64)
    qrs = processing.xqrs_detect(sig, fs=record.fs, verbose=False)
    radius = int(0.1 * record.fs)
    peaks = processing.correct_peaks(sig, qrs, search_radius=radius, smooth_window_size=int(0.05 * record.fs),
                                     peak_dir="compare")
    return np.unique(np.asarray(peaks, dtype=np.int64))


def evaluate(mitdb, names, model) -> dict:
    from wfdb import processing

    from models import training

    reference = TFLiteReference(model.path.read_bytes())
    labels = list(model.labels)
    truth, pred, per_record = [], [], {}
    totals = {"annotated": 0, "detected": 0, "matched": 0, "missed": 0, "false_positive": 0}
    fp_called, missed_by_class = {c: 0 for c in labels}, {c: 0 for c in labels}
    for record in data.iter_records(mitdb, names):
        t = time.perf_counter()
        peaks = detect(record)
        cmp = processing.compare_annotations(record.r_peaks, peaks, int(TOLERANCE_S * record.fs))
        match = {int(t_i): int(r_i) for r_i, t_i in zip(cmp.matched_ref_inds, cmp.matched_test_inds)}
        # Unmatched detections still shape the RR features (a device would see them); their symbol is a
        # placeholder, they are scored separately.
        symbols = tuple(record.symbols[match[i]] if i in match else "Q" for i in range(len(peaks)))
        detected = replace(record, r_peaks=peaks, symbols=symbols)
        windows = data.beat_windows(detected, model.window)
        q = data.quantize(windows.x, model.input.scale, model.input.zero_point)
        out = reference.run(q).reshape(len(q), -1)
        called = out.argmax(1)
        scored = set()
        for beat, c in zip(windows.beats, called):
            if beat.index in match:
                ann = match[beat.index]
                scored.add(ann)
                truth.append(data.AAMI_MAP[record.symbols[ann]])
                pred.append(labels[int(c)])
            else:
                fp_called[labels[int(c)]] += 1
        # Annotated beats never classified: missed by the detector, or their detection fell at an edge.
        unclassified = [i for i in range(len(record.r_peaks)) if i not in scored]
        for i in unclassified:
            missed_by_class[data.AAMI_MAP[record.symbols[i]]] += 1
            truth.append(data.AAMI_MAP[record.symbols[i]])
            pred.append("(not classified)")
        n_fp = len(peaks) - len(match)
        per_record[record.name] = {"annotated": len(record.r_peaks), "detected": len(peaks), "matched": len(match),
                                   "missed": len(record.r_peaks) - len(match), "false_positive": n_fp,
                                   "unclassified_annotated": len(unclassified),
                                   "seconds_host_wall": round(time.perf_counter() - t, 1)}
        for k in totals:
            totals[k] += per_record[record.name][k]
        print(record.name, per_record[record.name], flush=True)
    totals["se"] = round(totals["matched"] / max(1, totals["annotated"]), 4)
    totals["ppv"] = round(totals["matched"] / max(1, totals["detected"]), 4)
    scored_labels = labels + ["(not classified)"]
    idx = {c: i for i, c in enumerate(scored_labels)}
    metrics = training.classification_metrics(np.array([idx[c] for c in truth]), np.array([idx[c] for c in pred]),
                                              tuple(scored_labels))
    return {"detector": {"name": "wfdb.processing.xqrs_detect + correct_peaks (100 ms, compare)",
                         "channel": "MLII", "tolerance_s": TOLERANCE_S, **totals},
            "classification": metrics,
            "false_positive_detections_called": fp_called,
            "annotated_beats_not_classified_by_class": missed_by_class,
            "per_record": per_record}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mitdb", default=str(data.BUNDLED_DIR))
    ap.add_argument("--records", default="DS2")
    ap.add_argument("--model", default="rr_beat")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args(argv)
    (model,) = load_registry(names=[args.model])
    t0 = time.perf_counter()
    result = {"model": model.name, "model_sha256": model.sha256, "records": list(data.resolve_records(args.records)),
              **evaluate(args.mitdb, args.records, model),
              "total_seconds_host_wall": round(time.perf_counter() - t0, 1)}
    pc = result["classification"]["per_class"]
    print("detector:", result["detector"])
    print(" ".join(f"{c}: Se {pc[c]['se']} +P {pc[c]['ppv']}" for c in model.labels if c in pc))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
