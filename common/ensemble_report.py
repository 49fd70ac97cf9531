"""What 05 reports of a blend: test scores per species where test truth exists, one row per
run and one for the blend (CV, OOF, test figures), the runs that are weaker on CV, and the
markdown report with its notes. `cfg` is 05's CFG (blend, calibrate, prior_scaling,
frequency_term); `fitted` is its fit_blend result, `infos` its runs."""
from __future__ import annotations

import numpy as np

from common import metrics, stage


def score_test(found, ids: list, scores: np.ndarray, probs: np.ndarray | None = None,
               to_species=np.asarray) -> dict:
    """Test LWLRAP (and F1@0.5 of `probs`) where test truth exists (the demo), else {}; the
    truth is per species, `scores` and `probs` per class (mapped by `to_species`)."""
    if found is None:
        return {}
    truth_ids, truth = found
    order = {rid: i for i, rid in enumerate(ids)}
    rows = [order[r] for r in truth_ids]
    out = {"test_lwlrap": metrics.lwlrap(truth, to_species(scores[rows]))}
    if probs is not None:
        out["test_f1"] = metrics.f1_at(truth, to_species(probs[rows]))["f1"]
    return out

def report_rows(cfg, infos: list, fitted: dict, found, ids: list, out: dict,
                to_species=np.asarray) -> list:
    """Per run and for the blend: CV figures, and test figures per species where `found`."""
    def score(scores, probs=None):
        return score_test(found, ids, scores, probs, to_species)

    rows = []
    for info, w in zip(infos, fitted["weights"]):
        row = {"run": info["name"], "backbone": info["mcfg"]["backbone"],
               "resolution": stage.resolution(info["mcfg"]), "folds": len(info["folds"]),
               "weight": float(w), "cv_lwlrap": info["cv_lwlrap"],
               "oof_common": info["oof_common"], "oof_calibrated": info.get("oof_common_cal"),
               **info["segment_f1"]}
        if found is not None:
            row.update(score(info["test_raw"], metrics.sigmoid(info["test"])))
        if "calibrator" in info and found is not None:
            row["test_lwlrap_calibrated"] = score(info["test"])["test_lwlrap"]
        rows.append(row)
    row = {"run": f"blend ({cfg.blend})", "weight": 1.0, "resolution": "",
           "backbone": "+".join(sorted({r["backbone"] for r in rows})),
           "folds": sum(r["folds"] for r in rows if r["weight"] > 0),
           "cv_lwlrap": fitted["cv_lwlrap"], "oof_common": fitted["cv_lwlrap"],
           **fitted["segment_f1"]}
    if found is not None:
        row.update(score(out["plain"], out["probs"]))
    if out.get("prior_applied") is not None and found is not None:
        row["test_lwlrap_prior"] = score(out["scaled"])["test_lwlrap"]
    return rows + [row]

def weaker_runs(infos: list, weights, calibrated: bool) -> list[str]:
    """One line per run whose OOF LWLRAP (calibrated when the blend is) is below the best
    run's: a stage that does not help on honest CV says so instead of hiding in the blend."""
    key = "oof_common_cal" if calibrated else "oof_common"
    best = max(infos, key=lambda i: i[key])
    return [f"{i['name']}: CV {i[key]:.4f} is below {best['name']}'s {best[key]:.4f} "
            f"(blend weight {w:.2f})" for i, w in zip(infos, weights) if i[key] < best[key]]

def render_report(cfg, rows: list, facts: dict) -> str:
    cols = [c for c in ("run", "backbone", "resolution", "folds", "weight", "cv_lwlrap",
                        "oof_common", "oof_calibrated", "local_f1", "soundscape_f1",
                        "local_roc_auc", "local_cmap", "test_lwlrap", "test_lwlrap_calibrated",
                        "test_lwlrap_prior", "test_f1")
            if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)  # noqa
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    notes = [f"- blend: {cfg.blend}; calibration: {cfg.calibrate} ({facts['calibration_note']}); "
             f"prior scaling: {cfg.prior_scaling} ({facts.get('prior_note', 'off')}); "
             f"frequency term: {cfg.frequency_term} ({facts['frequency_term']['note']})",
             f"- oof_common: OOF LWLRAP on the {facts['n_common']} recordings in every run's "
             "oof.csv; oof_calibrated: the same after per-class Platt scaling fitted on the "
             "other folds (the blend's CV uses it); cv_lwlrap of a run: its own metrics.json"]
    if "test_f1" in cols:
        notes.append("- test_f1: F1@0.5 of sigmoid(logits); for the blend, of the weighted mean "
                     "of the runs' probabilities (blended z-scores or ranks are no probabilities)")
    if "local_f1" in rows[-1] or "soundscape_f1" in rows[-1]:
        notes.append("- local_f1 / soundscape_f1: row F1@0.5 of 5 s segments (BirdCLEF 2021 rule); "
                     "for the blend, of the weighted mean of the runs' segment probabilities")
    if "local_roc_auc" in rows[-1]:
        notes.append("- local_roc_auc / local_cmap: macro ROC-AUC over the classes with a "
                     "positive (BirdCLEF 2024/2025) and padded cmAP (2023) of the same segments")
    if facts.get("no_test"):
        notes.append(f"- no test scores: {facts['no_test']}; the pictures show held-out (OOF) "
                     "recordings, each drawn by the fold model that validated it")
    notes += [f"- weaker than the best run on CV: {line}" for line in facts.get("weaker", [])]
    rule = facts.get("event_rule")
    if rule:
        notes.append(f"- events: frame threshold {rule['threshold']:.2f}, min duration "
                     f"{rule['min_seconds']:.3f} s ({'chosen on ' + str(rule['recordings']) + ' OOF recordings, event F1 %.3f' % rule['oof_f1'] if rule['chosen'] == 'oof' else rule['chosen']})")
    if "test_prevalence_baseline" in facts:
        notes.append(f"- test prevalence baseline LWLRAP: {facts['test_prevalence_baseline']:.4f}")
    if facts.get("filled"):
        notes.append(f"- {len(facts['filled'])} sample ids had no prediction and got column "
                     f"means: {facts['filled'][:10]}")
    return "# Ensemble report\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"

def blend_facts(infos: list, fitted: dict) -> dict:
    """What the report says of the OOF blend: common recordings, calibration, weaker runs."""
    cal_cv, sim = fitted.get("cv_calibrated", float("nan")), fitted.get("shift_simulation") or {}
    return {"n_common": fitted["n_common"],
            "calibration_note": f"{'used' if fitted['calibrated'] else 'not used'}: blend CV "
                                f"{cal_cv:.4f} calibrated vs {fitted['cv_uncalibrated']:.4f} raw; "
                                f"on skewed OOF resamples raw {sim.get('raw', float('nan')):.4f}, "
                                f"calibrated {sim.get('none', float('nan')):.4f}, with the EM "
                                f"prior {sim.get('em', float('nan')):.4f}",
            "weaker": weaker_runs(infos, fitted["weights"], fitted["calibrated"]),
            "frequency_term": {k: fitted["term"][k] for k in ("weight", "note")},
            "shift_simulation": fitted.get("shift_simulation")}
