"""Embedded demo dataset in the BirdCLEF 2023-2025 layout (common/layouts/birdclef2023.py):

    python -m common.demos.birdclef2023 --out data/birdclef2023_demo

The clips and soundscapes of the BirdCLEF 2021 demo's synthesis (common/demos/birdclef.py:
the RFCx demo's calls, decoys and backgrounds), written as Kaggle lays out 2023-2025 data:
train.csv (primary_label, secondary_labels, type, filename "<label>/XC*.ogg", rating),
train_audio/<label>/, taxonomy.csv, test_soundscapes/soundscape_<n>.ogg and
sample_submission.csv (row_id = `<soundscape stem>_<end second>` for every 5 s segment,
then one column per class). The last test soundscape is 2.5 s longer than the others, so it
ends with a partial segment (a row, by the rule of common/layouts/soundscapes.py).
unlabeled_soundscapes/soundscape_<n>.ogg are made like the test soundscapes (the same call
density and classes, other seeds), for self-training (01 --max_unlabeled). The segments'
truth goes to test_soundscape_labels.csv and unlabeled_soundscape_labels.csv (row_id, then
0/1 per class), which a Kaggle kernel never sees; no download, byte-identical output for a
given spec.
"""
from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from common.demos.birdclef import BirdDemoSpec, _clip, _soundscape, label, species_of
from common.demos import spec_cli
from common.demos.noise import release_noise_bank

RATINGS = (0.0, 3.0, 3.5, 4.0, 4.5, 5.0)  # 0 = unrated, as iNaturalist clips in 2025


@dataclasses.dataclass
class Bird2023DemoSpec(BirdDemoSpec):
    n_soundscapes: int = 2           # test soundscapes
    soundscape_seconds: float = 60.0  # real ones are 60 s (2024, 2025) to 240 s
    partial_seconds: float = 2.5     # added to the last test soundscape (0: none)
    n_unlabeled: int = 8             # unlabeled_soundscapes/, soundscape_seconds long each


def write_birdclef2023_demo(out_dir, spec: Bird2023DemoSpec = Bird2023DemoSpec(),
                            workers: int = 2) -> dict:
    """Write the dataset to out_dir (train.csv last: it marks a finished dataset)."""
    out = Path(out_dir)
    if (out / "train.csv").exists() and not (out / "demo_meta.json").exists():
        raise ValueError(f"{out} holds a train.csv but no demo_meta.json: it looks like real "
                         "data, refusing to overwrite it; pass an empty or demo folder")
    species = species_of(spec)
    classes = [label(s) for s in species]
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0]))
    clips = [(s, float(rng.choice(spec.clip_seconds))) for s in species
             for _ in range(spec.clips_per_class)]
    order = sorted(range(len(clips)), key=lambda i: clips[i][1])
    jobs = [(spec, i, clips[i][0], clips[i][1], [o for o in species if o != clips[i][0]],
             str(out), "train_audio") for i in order]
    n = spec.n_soundscapes
    scapes = [(spec, j, species, str(out),
               ("test_soundscapes", f"soundscape_{100000 + 37 * j}",
                spec.soundscape_seconds + (spec.partial_seconds if j == n - 1 else 0.0)))
              for j in range(n)]
    free = [(spec, 1000 + j, species, str(out), ("unlabeled_soundscapes",
                                                  f"soundscape_{200000 + 37 * j}",
                                                  spec.soundscape_seconds))
            for j in range(spec.n_unlabeled)]  # seeds apart from the test soundscapes'
    with ProcessPoolExecutor(workers) as pool:
        meta = list(pool.map(_clip, jobs, chunksize=8))
        segments = [r for rows in pool.map(_soundscape, scapes) for r in rows]
        free_rows = [r for rows in pool.map(_soundscape, free) for r in rows]
    release_noise_bank()
    meta = pd.DataFrame(meta).sort_values("filename").drop(columns="calls")
    meta["filename"] = meta["primary_label"] + "/" + meta["filename"]
    meta["rating"] = [RATINGS[i % len(RATINGS)] for i in range(len(meta))]
    meta["collection"] = "XC"
    pd.DataFrame({"primary_label": classes, "inat_taxon_id": [1000 + s for s in species],
                  "scientific_name": [f"Demo species {s}" for s in species],
                  "common_name": [f"demo {s}" for s in species], "class_name": "Aves"}
                 ).to_csv(out / "taxonomy.csv", index=False)
    rows = [f"{r['stem']}_{r['seconds']}" for r in segments]
    sample = pd.DataFrame({"row_id": rows, **{c: 1.0 / len(classes) for c in classes}})
    sample.to_csv(out / "sample_submission.csv", index=False)
    truth = segment_truth(segments, classes)
    truth.to_csv(out / "test_soundscape_labels.csv", index=False)
    if free_rows:
        segment_truth(free_rows, classes).to_csv(out / "unlabeled_soundscape_labels.csv",
                                                 index=False)
    summary = {"classes": classes, "clips": len(meta),
               "with_secondary": int((meta["secondary_labels"] != "[]").sum()),
               "test_soundscapes": n, "test_segments": len(rows),
               "unlabeled_soundscapes": spec.n_unlabeled, "unlabeled_segments": len(free_rows),
               "nocall_segments": int((truth[classes].sum(axis=1) == 0).sum())}
    (out / "demo_meta.json").write_text(json.dumps({"spec": dataclasses.asdict(spec), **summary},
                                                   indent=1) + "\n")
    meta.to_csv(out / "train.csv", index=False)
    return summary


def segment_truth(segments: list, classes: list) -> pd.DataFrame:
    """row_id (`<stem>_<end second>`), then 0/1 per class, of _soundscape's segment rows."""
    return pd.DataFrame({"row_id": [f"{r['stem']}_{r['seconds']}" for r in segments],
                         **{c: [int(c in r["birds"].split()) for r in segments] for c in classes}})


def main(argv=None) -> dict:
    return spec_cli(argv, "Write the BirdCLEF 2023-2025 demo dataset.",
                    "data/birdclef2023_demo", "birdclef2023", "Bird2023DemoSpec",
                    "write_birdclef2023_demo")


if __name__ == "__main__":
    main()
