"""Everything a training or inference stage reads from one preprocessing run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import runs
from common.audio import WaveCache
from common.species import SpeciesMap, from_meta


@dataclass
class Prepared:
    run_dir: Path
    classes: list
    sample_rate: int
    recordings: pd.DataFrame   # recording_id, split, duration, n_samples, ...
    annotations: pd.DataFrame  # the annotation table
    folds: pd.DataFrame        # recording_id, fold (FP-only: held out, never validated), has_tp
    cache: WaveCache
    label_unit: str = "events"  # events | clips (classes.json): what a +1 row labels
    soundscapes: pd.DataFrame | None = None  # clips: row_id, recording_id, t_min, t_max, birds
    species: SpeciesMap | None = None  # classes -> submission columns; None: the identity

    def __post_init__(self):
        if self.species is None:
            self.species = SpeciesMap(self.classes)

    @property
    def clips(self) -> bool:
        """True when +1 rows label whole clips (scored by 5 s segments: local and soundscape
        F1) instead of timed events."""
        return self.label_unit == "clips"

    @property
    def durations(self) -> dict:
        return dict(zip(self.recordings["recording_id"], self.recordings["duration"]))

    def ids(self, split: str) -> list:
        return self.recordings.loc[self.recordings["split"] == split, "recording_id"].tolist()

    def tp_matrix(self, recording_ids) -> np.ndarray:
        """(N, K) 0/1: the TP species annotated anywhere in each recording (sparse truth)."""
        index = {c: i for i, c in enumerate(self.classes)}
        row = {rid: i for i, rid in enumerate(recording_ids)}
        y = np.zeros((len(recording_ids), len(self.classes)), dtype=np.float32)
        tp = self.annotations[self.annotations["label"] > 0]
        for rid, cls in zip(tp["recording_id"], tp["class"]):
            if rid in row:
                y[row[rid], index[cls]] = 1
        return y

    def test_truth(self, input_dir) -> tuple[list, np.ndarray] | None:
        """(ids, (N, S) 0/1 per species) of the test recordings: the run's test_truth.csv
        (written from the boxes of the test recordings, or copied from INPUT_DIR), else
        INPUT_DIR/test_truth.csv (runs made before 01 wrote it), else None."""
        path = self.run_dir / "test_truth.csv"
        if not path.is_file():
            path = Path(input_dir) / "test_truth.csv"
        if not path.is_file() or not self.ids("test"):
            return None
        truth = pd.read_csv(path, dtype={"recording_id": str})
        truth = truth[truth["recording_id"].isin(set(self.ids("test")))]
        return truth["recording_id"].tolist(), truth[self.species.columns].to_numpy(np.float32)

    def test_events(self, input_dir=None) -> pd.DataFrame | None:
        """Every annotated event of the test recordings (recording_id, class (its species),
        t_min, t_max, ...) from the run's test_events.csv, else INPUT_DIR/test_events.csv
        (runs made before 01 copied it), else None."""
        path = self.run_dir / "test_events.csv"
        if not path.is_file() and input_dir is not None:
            path = Path(input_dir) / "test_events.csv"
        if not path.is_file() or not self.ids("test"):
            return None
        events = pd.read_csv(path, dtype={"recording_id": str})
        events = events.assign(**{"class": events["class"].map(self.species.species)})
        return events[events["recording_id"].isin(set(self.ids("test")))]


def load_prepared(work_dir, tag: str = "latest") -> Prepared:
    run_dir = runs.find_run(work_dir, "preprocess", tag)
    meta = json.loads((run_dir / "classes.json").read_text())
    read = lambda name: pd.read_csv(run_dir / name, dtype={"recording_id": str})  # noqa: E731
    return Prepared(run_dir=run_dir, classes=meta["classes"], sample_rate=int(meta["sample_rate"]),
                    recordings=read("recordings.csv"), annotations=read("annotations.csv"),
                    folds=read("folds.csv"), cache=WaveCache(run_dir / "waves"),
                    label_unit=label_unit(meta), species=from_meta(meta),
                    soundscapes=read("soundscapes.csv") if (run_dir / "soundscapes.csv").is_file()
                    else None)


def label_unit(meta: dict) -> str:
    """classes.json's label_unit; runs made before it was written say layout "birdclef"."""
    if "label_unit" in meta:
        return meta["label_unit"]
    return "clips" if meta.get("layout") == "birdclef" else "events"
