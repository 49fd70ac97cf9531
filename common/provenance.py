"""Label provenance: which fold models may label which recordings for which fold.

Honest CV needs that nothing fold k's model learns from (labels, pseudo labels, initial
weights) derives from fold k's validation labels. A fold model j "carries" the labels of the
annotated recordings it trained on (its run's trained_on.csv). So:

- model j is a *clean voter* for fold k when it never trained on a validation recording of
  fold k; in one level of k-fold CV that is model k alone (every other model trained on
  fold k's validation recordings);
- model j *may vote* on a recording unless it trained on that recording's annotations
  (a test recording has none: a model that trained on its own pseudo labels of a test
  recording may label it again in a later round);
- fold k's training never uses its own validation or held-out recordings.

03 records the voters of every pseudo row; 04 keeps, for fold k, only the rows whose voters
are all clean for fold k (and counts the rest).
"""
from __future__ import annotations

import pandas as pd


def split_voters(text) -> set[int]:
    """'0;2' -> {0, 2} (the voters column of pseudo_labels.csv)."""
    if pd.isna(text) or str(text) == "":
        return set()
    return {int(v) for v in str(text).split(";")}


def join_voters(voters) -> str:
    return ";".join(str(int(v)) for v in sorted(voters))


def validation_ids(folds: pd.DataFrame, fold: int) -> set:
    """The recordings whose labels score fold `fold` (its TP recordings)."""
    return set(folds.loc[(folds["fold"] == fold) & folds["has_tp"].astype(bool), "recording_id"])


def excluded_ids(folds: pd.DataFrame, fold: int) -> set:
    """Recordings fold `fold` never trains on: its validation and held-out ones."""
    return set(folds.loc[folds["fold"] == fold, "recording_id"])


def clean_voters(seen: dict, folds: pd.DataFrame, fold: int) -> list[int]:
    """Models j (keys of seen: {j: recordings j trained on}) that never trained on a
    validation recording of `fold`."""
    val = validation_ids(folds, fold)
    return [j for j in sorted(seen) if not (set(seen[j]) & val)]


def may_vote(seen_labelled: set, rid: str, vote_on_trained: bool = False) -> bool:
    """Whether a model that trained on the annotations of `seen_labelled` may label `rid`."""
    return vote_on_trained or rid not in seen_labelled


def clean_rows(pseudo: pd.DataFrame, fold: int, clean: list[int], folds: pd.DataFrame) -> tuple:
    """(rows fold `fold` may train on, number dropped): voters all clean for the fold and the
    recording outside the fold's validation and held-out sets; one row per (recording,
    window, class) even when several folds' rows hold it."""
    if "voters" not in pseudo.columns:
        return pseudo.iloc[:0], len(pseudo)
    allowed = set(clean)
    ok = pseudo["voters"].map(lambda v: bool(split_voters(v)) and split_voters(v) <= allowed)
    ok = ok.astype(bool)  # an empty table maps to an object column
    ok &= ~pseudo["recording_id"].isin(excluded_ids(folds, fold))
    kept = pseudo[ok]
    keys = [c for c in ("recording_id", "t_min", "t_max", "class", "label") if c in kept.columns]
    kept = kept.drop_duplicates(subset=keys)
    return kept, int((~ok).sum())
