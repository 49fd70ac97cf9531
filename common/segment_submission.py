"""BirdCLEF submissions: a row per 5 s segment of every test soundscape (05_ensemble.py).

The rows are the preprocessing run's test_segments.csv (named by the layout,
common/layouts/soundscapes.py). Each run's fold models score every segment on one
training-length window centred on it and kept inside the recording (common.segments, as
the labelled soundscapes are scored); a run's probability is the mean of its folds'
sigmoids, and the blend the weighted mean over runs with 05's run weights: the same
probabilities whose F1 chose the threshold.

- "birds" (BirdCLEF 2021): `row_id,birds`, the classes at or above the threshold separated
  by spaces (in class order), or `nocall`. The threshold is the best of a sweep of the
  blend's row F1 on the labelled soundscapes (soundscape F1), else on the validation clips'
  segments (local F1), else 0.5; never chosen on test.
- "probabilities" (BirdCLEF 2023-2025): `row_id`, then one probability per class in the
  sample submission's column order.

Rows follow sample_submission.csv when it names segments of these soundscapes (a sample row
without a prediction, e.g. of a soundscape that could not be decoded, gets `nocall` or each
column's mean, and is listed); a sample that names none of them (Kaggle's public placeholder
of a hidden test set) only gives the columns, and the rows follow the soundscapes. The
shape is checked before the file is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from common import blend, metrics, runs
from common.cli import ConfigError
from common.infer import InferenceClock
from common.onnx_runtime import load_fold_model
from common.segments import SegmentSet

SEGMENT_SCORES = "segment_scores.pth"  # partial result: each fold model's test segment scores

KINDS = ("birds", "probabilities")
NOCALL = "nocall"


def kind_of(prep) -> str:
    """classes.json's submission kind: recordings (RFCx), birds or probabilities."""
    meta = json.loads((prep.run_dir / "classes.json").read_text())
    return meta.get("submission", "recordings")


def applies(prep) -> bool:
    """True when 05 submits segments: a BirdCLEF layout with decoded test soundscapes."""
    return kind_of(prep) in KINDS and (prep.run_dir / "test_segments.csv").is_file() \
        and bool(prep.ids("test"))


def load_segments(prep) -> pd.DataFrame:
    return pd.read_csv(prep.run_dir / "test_segments.csv", dtype={"row_id": str,
                                                                  "recording_id": str})


def predict(infos: list, weights, preps: dict, table: pd.DataFrame, batch: int,
            device, runtime: str = "torch", clock: InferenceClock | None = None,
            onnx_dir=None, partial=None) -> np.ndarray:
    """(N, K) blended probabilities of the segments of `table`, in its order; the fold
    models run by `runtime` (common/onnx_runtime.py), each timed by `clock`. With `partial`
    (a file path) each fold's probabilities are stored there as soon as they exist, and a
    re-run of a killed 05 on the same segments keeps them instead of scoring them again."""
    per_run, clock = [], clock or InferenceClock(runtime)
    segments = list(zip(table["recording_id"].astype(str), table["t_min"].astype(float)))
    stored = runs.load_partial(partial, lambda got: got["segments"] == segments) \
        if partial is not None else None
    done = stored["probs"] if stored is not None else {}
    if done:
        print(f"  test segment scores kept from the killed run: {', '.join(done)}", flush=True)
    for info in infos:
        run_prep, mcfg = preps[info["preprocess"]], info["mcfg"]
        seg = SegmentSet(table, run_prep.annotations.iloc[:0], run_prep.classes,
                         run_prep.sample_rate, mcfg["crop_seconds"])
        audio_s = sum(run_prep.cache.length(r) for r in seg.ids) / run_prep.sample_rate
        folds = []
        for fold in info["folds"]:
            key = f"{info['name']} fold {fold}"
            if key not in done:
                with clock.loading():
                    model = load_fold_model(info["dir"] / f"fold{fold}.pth", device, runtime,
                                            onnx_dir)
                with clock.scoring(audio_s):
                    done[key] = metrics.sigmoid(seg.logits(model, run_prep.cache, batch, device))
                if partial is not None:
                    runs.save_partial(partial, {"segments": segments, "probs": done})
                print(f"  {key}: {len(seg.table)} test segments scored", flush=True)
            folds.append(done[key])
        per_run.append(np.mean(folds, axis=0))
    # SegmentSet orders by recording, then t_min: back to the table's order
    order = seg.table.reset_index().set_index(["recording_id", "t_min"])["index"]
    back = order.loc[list(zip(table["recording_id"], table["t_min"]))].to_numpy()
    return blend.weighted_mean(per_run, weights)[back]


def threshold_of(segment_f1: dict) -> tuple[float, str]:
    """The birds threshold and where it was chosen (never on test)."""
    for name, what in (("soundscape", "the labelled soundscapes"),
                       ("local", "the validation clips' 5 s segments (OOF)")):
        if f"{name}_threshold" in segment_f1:
            return float(segment_f1[f"{name}_threshold"]), \
                f"best row F1 of the blend on {what}: {segment_f1[f'{name}_f1_best']:.4f}"
    return 0.5, "no held-out segments to choose on: 0.5"


def birds_strings(probs: np.ndarray, classes: list, threshold: float) -> list[str]:
    """Per row: the classes with prob >= threshold, space-separated in class order, or nocall."""
    hits = np.asarray(probs) >= threshold
    return [" ".join(c for c, h in zip(classes, row) if h) or NOCALL for row in hits]


def frame(kind: str, table: pd.DataFrame, probs: np.ndarray, classes: list,
          threshold: float) -> pd.DataFrame:
    if kind == "birds":
        return pd.DataFrame({"row_id": table["row_id"].astype(str),
                             "birds": birds_strings(probs, classes, threshold)})
    out = pd.DataFrame(np.asarray(probs, np.float64), columns=classes)
    out.insert(0, "row_id", table["row_id"].astype(str).to_numpy())
    return out


def columns_of(kind: str, sample: pd.DataFrame | None, classes: list, path) -> list:
    """The submission's columns: row_id,birds (2021), or the sample's (row_id + classes)."""
    if kind == "birds":
        if sample is not None and not {"row_id", "birds"} <= set(sample.columns):
            raise ConfigError(f"{path}: a BirdCLEF 2021 sample submission has columns row_id "
                              f"and birds; found {list(sample.columns)}")
        return ["row_id", "birds"]
    if sample is None:
        return ["row_id", *classes]
    cols = list(sample.columns)
    if cols[0] != "row_id" or sorted(cols[1:]) != sorted(classes):
        missing = [c for c in classes if c not in cols]
        extra = [c for c in cols[1:] if c not in classes]
        raise ConfigError(f"{path}: columns differ from the model's classes (missing "
                          f"{missing[:5]}, extra {extra[:5]}); is it this competition's sample?")
    return cols


def align(sub: pd.DataFrame, sample: pd.DataFrame | None, kind: str) -> tuple:
    """(submission in the sample's row order, facts: aligned, filled, dropped)."""
    facts = {"aligned_to_sample": False, "filled": [], "dropped": 0}
    if sample is None:
        return sub, facts
    prefixes = {r.rsplit("_", 1)[0] for r in sub["row_id"]}
    theirs = sample["row_id"].astype(str)
    if not theirs.map(lambda r: r.rsplit("_", 1)[0] in prefixes).any():
        return sub, facts  # a placeholder sample: it names no soundscape of ours
    out = pd.DataFrame({"row_id": theirs.to_numpy()}).merge(sub, on="row_id", how="left")
    missing = out[out.columns[1]].isna()
    facts.update(aligned_to_sample=True, filled=out.loc[missing, "row_id"].tolist(),
                 dropped=int((~sub["row_id"].isin(set(theirs))).sum()))
    if kind == "birds":
        out["birds"] = out["birds"].fillna(NOCALL)
    else:
        out[out.columns[1:]] = out[out.columns[1:]].fillna(sub[sub.columns[1:]].mean())
    return out, facts


def check(sub: pd.DataFrame, kind: str, columns: list, row_ids: list, classes: list) -> None:
    """Raise ValueError saying what differs: columns, row ids and their order, values
    (probabilities finite in [0, 1]; birds: known codes separated by spaces, or nocall)."""
    if list(sub.columns) != list(columns):
        raise ValueError(f"submission columns {list(sub.columns)[:6]} differ from the expected "
                         f"{list(columns)[:6]}")
    ours = sub["row_id"].astype(str).tolist()
    if len(ours) != len(row_ids):
        raise ValueError(f"submission has {len(ours)} rows, expected {len(row_ids)}")
    wrong = [i for i, (a, b) in enumerate(zip(ours, row_ids)) if a != str(b)]
    if wrong:
        raise ValueError(f"submission row {wrong[0]} is {ours[wrong[0]]!r}, expected "
                         f"{row_ids[wrong[0]]!r}")
    if len(set(ours)) != len(ours):
        raise ValueError("submission repeats row ids")
    if kind == "probabilities":
        values = sub[columns[1:]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        bad = ~(np.isfinite(values) & (values >= 0) & (values <= 1))
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise ValueError(f"submission value at row_id={ours[row]!r}, column "
                             f"{columns[1 + col]!r} is not a probability: {values[row, col]}")
        return
    known = set(classes)
    for rid, cell in zip(ours, sub["birds"]):
        codes = str(cell).split()
        if codes != [NOCALL] and (not codes or not set(codes) <= known):
            raise ValueError(f"submission birds at row_id={rid!r} is {cell!r}: expected known "
                             "codes separated by spaces, or nocall")


def write(run_dir: Path, prep, preps: dict, infos: list, weights, segment_f1: dict,
          input_dir, batch: int, device, runtime: str = "torch",
          clock: InferenceClock | None = None) -> dict:
    """Predict, align, check and write submission.csv; returns the facts for the report."""
    kind, table = kind_of(prep), load_segments(prep)
    probs = predict(infos, weights, preps, table, batch, device, runtime, clock, run_dir / "onnx",
                    runs.partial_path(run_dir, SEGMENT_SCORES))
    threshold, chosen = threshold_of(segment_f1) if kind == "birds" else (None, "")
    path = Path(input_dir) / "sample_submission.csv"
    sample = pd.read_csv(path, dtype=str) if path.is_file() else None
    if sample is None:
        print(f"warning: no {path}; the submission lists every segment of the test soundscapes",
              flush=True)
    columns = columns_of(kind, sample, prep.classes, path)
    sub = frame(kind, table, probs, prep.classes, threshold)
    sub, facts = align(sub, sample, kind)
    sub = sub[columns]
    row_ids = sample["row_id"].astype(str).tolist() if facts["aligned_to_sample"] else \
        table["row_id"].astype(str).tolist()
    check(sub, kind, columns, row_ids, prep.classes)
    runs.save_csv(run_dir / "submission.csv", sub)
    runs.save_csv(run_dir / "test_segments_pred.csv", frame("probabilities", table, probs,
                                                            prep.classes, 0.5))
    facts.update(kind=kind, rows=len(sub), soundscapes=int(table["recording_id"].nunique()),
                 threshold=threshold, threshold_chosen_on=chosen,
                 test=score_truth(input_dir, table, probs, prep.classes, threshold))
    if kind == "birds":
        facts["nocall_rows"] = int((sub["birds"] == NOCALL).sum())
    where = "in the sample's order" if facts["aligned_to_sample"] else (
        "in soundscape order (the sample names none of these soundscapes)" if sample is not None
        else "in soundscape order")
    print(f"submission: {len(sub)} rows ({kind}) for {facts['soundscapes']} test soundscapes, "
          f"{where}; shape checked" + (f"; threshold {threshold:.2f} ({chosen})" if
                                       threshold is not None else ""), flush=True)
    if facts["filled"]:
        print(f"WARNING: {len(facts['filled'])} sample rows had no prediction (a soundscape "
              f"not decoded?) and got {'nocall' if kind == 'birds' else 'column means'}: "
              f"{facts['filled'][:5]}", flush=True)
    return facts


def score_truth(input_dir, table: pd.DataFrame, probs: np.ndarray, classes: list,
                threshold: float | None) -> dict:
    """Test figures where INPUT_DIR has the segments' truth (the demos'
    test_soundscape_labels.csv: row_id with birds, or a 0/1 column per class; a Kaggle
    kernel never has it): macro ROC-AUC, padded cmAP and row F1 at the submission's
    threshold (0.5 for probabilities). {} without it."""
    path = Path(input_dir) / "test_soundscape_labels.csv"
    if not path.is_file():
        return {}
    labels = pd.read_csv(path, dtype={"row_id": str}).set_index("row_id")
    keep = table["row_id"].isin(labels.index).to_numpy()
    if not keep.any():
        return {}
    labels = labels.loc[table.loc[keep, "row_id"]]
    if "birds" in labels.columns:
        truth = np.array([[c in str(b).split() for c in classes] for b in labels["birds"]], float)
    else:
        truth = labels.reindex(columns=classes, fill_value=0).to_numpy(np.float64)
    probs = np.asarray(probs)[keep]
    return {"test_segments": int(keep.sum()), "test_roc_auc": metrics.macro_roc_auc(truth, probs),
            "test_cmap": metrics.padded_cmap(truth, probs),
            "test_row_f1": metrics.row_f1(truth, probs, 0.5 if threshold is None else
                                          threshold)["f1"]}


def report_md(facts: dict) -> str:
    """The submission section of report.md."""
    lines = [f"\n## Submission\n\n- {facts['rows']} rows ({facts['kind']}) for "
             f"{facts['soundscapes']} test soundscapes, "
             + ("in the sample submission's order" if facts["aligned_to_sample"] else
                "in soundscape order") + "; shape checked"]
    if facts.get("threshold") is not None:
        lines.append(f"- threshold {facts['threshold']:.2f}: {facts['threshold_chosen_on']}; "
                     f"{facts['nocall_rows']} rows nocall")
    if facts.get("test"):
        t = facts["test"]
        lines.append(f"- test truth (test_soundscape_labels.csv, {t['test_segments']} segments): "
                     f"macro ROC-AUC {t['test_roc_auc']:.4f}, padded cmAP {t['test_cmap']:.4f}, "
                     f"row F1 {t['test_row_f1']:.4f}")
    if facts["filled"]:
        lines.append(f"- {len(facts['filled'])} sample rows had no prediction and were filled: "
                     f"{facts['filled'][:10]}")
    if facts["dropped"]:
        lines.append(f"- {facts['dropped']} predicted segments are not in the sample and were "
                     "left out")
    return "\n".join(lines) + "\n"
