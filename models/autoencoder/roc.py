"""ae_beat's operating curve: ROC AUC, and Se at a fixed Sp with the threshold chosen on DS1 patients.

The committed INT8 autoencoder is run through the harness's reference (harness.bench.reference.TFLiteReference,
bit-exact with the board) on the DS1 calibration records (the recipe's patient hold-out, never trained on)
and on DS2. The reconstruction error is the bench's: MSE of the dequantized output against the
dequantized input. On the hold-out the threshold is set for a stated operating point (Sp = 0.90 on its N
beats), and that threshold is applied once to DS2. ROC AUC is the Mann-Whitney probability that an
abnormal beat has a larger error than a normal one (ties count half). No TensorFlow needed:

    python models/autoencoder/roc.py --mitdb ../shared/mitdb --out models/autoencoder/roc.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import numpy as np  # noqa: E402

from harness.bench import data  # noqa: E402
from harness.bench.model import load_registry  # noqa: E402
from harness.bench.reference import TFLiteReference  # noqa: E402

HOLDOUT = data.DS1[1::4]   # = models.training.HOLDOUT_RECORDS, the recipe's calibration records
TARGET_SP = 0.90


def errors(model, reference, mitdb, names) -> tuple[np.ndarray, np.ndarray]:
    """(MSE per beat, is_normal per beat) over the records, as harness/bench/run.py computes them."""
    errs, normal = [], []
    normal_labels = set(model.anomaly["normal_labels"])
    for record in data.iter_records(mitdb, names):
        w = data.beat_windows(record, model.window)
        q = data.quantize(w.x, model.input.scale, model.input.zero_point)
        out = reference.run(q).reshape(len(q), -1)
        xin = (q.astype(np.float32) - model.input.zero_point) * np.float32(model.input.scale)
        xout = (out.astype(np.float32) - model.output.zero_point) * np.float32(model.output.scale)
        errs.extend(float(np.mean((xout[i] - xin[i]) ** 2)) for i in range(len(q)))
        normal.extend(b.aami in normal_labels for b in w.beats)
    return np.array(errs), np.array(normal)


def auc(err: np.ndarray, normal: np.ndarray) -> float:
    """P(error of an abnormal beat > error of a normal beat), ties half: the area under the ROC curve."""
    from scipy.stats import rankdata

    ranks = rankdata(err)
    n_abn, n_norm = int((~normal).sum()), int(normal.sum())
    return float((ranks[~normal].sum() - n_abn * (n_abn + 1) / 2) / (n_abn * n_norm))


def at(err, normal, threshold) -> dict:
    called = err > threshold
    tp, fn = int((called & ~normal).sum()), int((~called & ~normal).sum())
    tn, fp = int((~called & normal).sum()), int((called & normal).sum())
    return {"threshold": threshold, "se": round(tp / max(1, tp + fn), 4), "sp": round(tn / max(1, tn + fp), 4),
            "ppv": round(tp / max(1, tp + fp), 4), "accuracy": round((tp + tn) / len(err), 4),
            "confusion": [[tn, fp], [fn, tp]], "confusion_axes": "rows=true normal/abnormal, cols=called normal/abnormal"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mitdb", default=str(data.BUNDLED_DIR))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    (model,) = load_registry(names=["ae_beat"])
    reference = TFLiteReference(model.path.read_bytes())
    hold_err, hold_normal = errors(model, reference, args.mitdb, HOLDOUT)
    test_err, test_normal = errors(model, reference, args.mitdb, data.DS2)
    # Smallest threshold whose hold-out Sp reaches the target: the TARGET_SP quantile of the N beats' errors.
    thr = float(np.quantile(hold_err[hold_normal], TARGET_SP, method="higher"))
    committed = float(model.anomaly["threshold"])
    result = {"model": model.name, "model_sha256": model.sha256,
              "source": "harness.bench.reference.TFLiteReference (tflite-runtime BUILTIN_REF), bench's MSE",
              "holdout_records": list(HOLDOUT), "holdout_beats": {"normal": int(hold_normal.sum()),
                                                                  "abnormal": int((~hold_normal).sum())},
              "test_records": list(data.DS2), "test_beats": {"normal": int(test_normal.sum()),
                                                             "abnormal": int((~test_normal).sum())},
              "roc_auc": {"holdout": round(auc(hold_err, hold_normal), 4), "ds2": round(auc(test_err, test_normal), 4)},
              "operating_point": {"rule": f"threshold = the {TARGET_SP} quantile of the hold-out N beats' errors "
                                          f"(Sp {TARGET_SP} on the DS1 hold-out)",
                                  "holdout": at(hold_err, hold_normal, thr), "ds2": at(test_err, test_normal, thr)},
              "committed_threshold_youden": {"holdout": at(hold_err, hold_normal, committed),
                                             "ds2": at(test_err, test_normal, committed)},
              "all_normal_baseline_accuracy_ds2": round(float(test_normal.mean()), 4)}
    print(json.dumps({k: result[k] for k in ("roc_auc", "operating_point")}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
