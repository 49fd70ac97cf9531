"""Embedded demo dataset in the BirdCLEF 2021 layout (common/layouts/birdclef2021.py), no download:

    python -m common.demos.birdclef --out data/birdclef_demo

Short clips of one focal species each (sometimes a second, quieter species, listed in
secondary_labels) under train_short_audio/<label>/, and a few labelled soundscapes whose
5 s segments list every species calling in them, or `nocall`. The calls, look-alike
decoys, colored noise, rain and insect drones come from the RFCx demo's synthesis
(common.demos.calls / common.demos.scene), so the species keep their real RFCx bands. Byte-identical
output for a given spec: every file has its own RNG from SeedSequence([seed, kind, index]).
"""
from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from common.demos import calls as dc
from common.data import overlap_hit
from common.demos.rfcx import DemoSpec
from common.demos import spec_cli
from common.demos.noise import release_noise_bank
from common.demos.scene import Scene

SITES = ("COR", "SSW", "SNE")


@dataclasses.dataclass
class BirdDemoSpec:
    seed: int = 0
    n_classes: int = 10             # species, spread over the RFCx demo's 24 bands
    clips_per_class: int = 16       # train_short_audio clips per species
    clip_seconds: tuple = (7.0, 10.0)  # clip lengths used (few distinct ones: fast synthesis)
    secondary_prob: float = 0.25    # chance a clip has a second, listed species
    n_soundscapes: int = 4
    soundscape_seconds: float = 60.0  # real ones are 600 s
    calls_per_minute: float = 10.0  # soundscape call density (about half the segments nocall)
    sample_rate: int = 32000
    n_test_soundscapes: int = 0     # unlabelled test_soundscapes/ (+ sample_submission.csv)


def species_of(spec: BirdDemoSpec) -> list[int]:
    return sorted({int(round(v)) for v in np.linspace(0, len(dc.SPECIES) - 1, spec.n_classes)})


def label(s: int) -> str:
    return f"sp{s:02d}"


def _scene(spec: BirdDemoSpec, seconds: float, rng, clip: bool) -> Scene:
    demo = DemoSpec(seed=spec.seed, n_train=1, n_test=1, duration=seconds,
                    sample_rate=spec.sample_rate, snr_min_db=0.0, snr_max_db=20.0,
                    tp_snr_min_db=5.0, rain_prob=0.1 if clip else 0.3,
                    drone_prob=0.2 if clip else 0.4)
    return Scene(demo, rng)


def _write(path: Path, scene: Scene, rng) -> None:
    audio = scene.audio * np.float32(rng.uniform(0.3, 0.8) / np.abs(scene.audio).max())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part.ogg")
    sf.write(str(tmp), audio, scene.sr, format="OGG", subtype="VORBIS")
    os.replace(tmp, path)


def _clip(job) -> dict:
    spec, index, s, seconds, others, out, *folder = job  # folder: the clips' audio folder
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1, index]))
    scene = _scene(spec, seconds, rng, clip=True)
    placed = 0
    for _ in range(1 + rng.poisson(1.0)):
        placed += scene.call(s, rng.uniform(5.0, 20.0)) is not None
    secondary = []
    if rng.random() < spec.secondary_prob:
        other = int(rng.choice(others))
        if scene.call(other, rng.uniform(0.0, 10.0)) is not None:
            secondary.append(label(other))
    if rng.random() < 0.4:
        scene.lookalike(int(rng.integers(len(dc.SPECIES))))
    scene.background()
    name = f"XC{100000 + index}.ogg"
    _write(Path(out) / (folder[0] if folder else "train_short_audio") / label(s) / name, scene, rng)
    return {"primary_label": label(s), "secondary_labels": str(secondary), "type": "['call']",
            "rating": 4.0, "filename": name, "calls": placed}


def _soundscape(job) -> list[dict]:
    """A soundscape and its 5 s segments' labels; `where` (folder, file stem, seconds) for
    the test soundscapes, else a labelled one in train_soundscapes/."""
    spec, index, classes, out, *where = job
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 2, index]))
    seconds = where[0][2] if where else spec.soundscape_seconds
    scene = _scene(spec, seconds, rng, clip=False)
    for _ in range(rng.poisson(spec.calls_per_minute * seconds / 60)):
        scene.call(int(rng.choice(classes)), rng.uniform(0.0, 15.0))
    for _ in range(rng.poisson(2.0 * seconds / 60)):
        scene.lookalike(int(rng.integers(len(dc.SPECIES))))
    scene.background()
    audio_id, site = 1000 + 37 * index, SITES[index % len(SITES)]
    folder, stem = (where[0][0], where[0][1]) if where else \
        ("train_soundscapes", f"{audio_id}_{site}_2020{index + 1:04d}")
    _write(Path(out) / folder / f"{stem}.ogg", scene, rng)
    calls = [e for e in scene.events if e["kind"] == "call"]
    rows = []
    for end in np.arange(5.0, seconds + 2.5 + 1e-6, 5.0):  # a last part of >= 2.5 s counts
        hit = [label(e["species_id"]) for e in calls
               if overlap_hit(e["t_min"], e["t_max"], end - 5.0, end, 0.5)]
        rows.append({"row_id": f"{audio_id}_{site}_{int(end)}", "site": site, "audio_id": audio_id,
                     "seconds": int(end), "birds": " ".join(sorted(set(hit))) or "nocall",
                     "stem": stem})
    return rows


def write_birdclef_demo(out_dir, spec: BirdDemoSpec = BirdDemoSpec(), workers: int = 2) -> dict:
    """Write the dataset to out_dir (train_metadata.csv last: it marks a finished dataset)."""
    out = Path(out_dir)
    if (out / "train_metadata.csv").exists() and not (out / "demo_meta.json").exists():
        raise ValueError(f"{out} holds a train_metadata.csv but no demo_meta.json: it looks like "
                         "real data, refusing to overwrite it; pass an empty or demo folder")
    species = species_of(spec)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0]))
    clips = [(s, float(rng.choice(spec.clip_seconds))) for s in species
             for _ in range(spec.clips_per_class)]
    order = sorted(range(len(clips)), key=lambda i: clips[i][1])  # same lengths together
    jobs = [(spec, i, clips[i][0], clips[i][1], [o for o in species if o != clips[i][0]], str(out))
            for i in order]
    scapes = [(spec, j, species, str(out)) for j in range(spec.n_soundscapes)]
    tests = [(spec, 500 + j, species, str(out)) for j in range(spec.n_test_soundscapes)]
    tests = [(*t, ("test_soundscapes", f"{1000 + 37 * t[1]}_{SITES[t[1] % 3]}_2021{j + 1:04d}",
                   spec.soundscape_seconds)) for j, t in enumerate(tests)]
    with ProcessPoolExecutor(workers) as pool:
        meta = list(pool.map(_clip, jobs, chunksize=8))
        segments = [r for rows in pool.map(_soundscape, scapes) for r in rows]
        test_rows = [r for rows in pool.map(_soundscape, tests) for r in rows]
    release_noise_bank()
    meta = pd.DataFrame(meta).sort_values("filename")
    labels = pd.DataFrame(segments, columns=["row_id", "site", "audio_id", "seconds", "birds"])
    labels.to_csv(out / "train_soundscape_labels.csv", index=False)
    if test_rows:  # the sample lists every segment; the truth (birds) stays apart from it
        test = pd.DataFrame(test_rows)
        test.assign(birds="nocall")[["row_id", "birds"]].to_csv(out / "sample_submission.csv",
                                                                 index=False)
        test[["row_id", "birds"]].to_csv(out / "test_soundscape_labels.csv", index=False)
    summary = {"classes": [label(s) for s in species], "clips": len(meta),
               "with_secondary": int((meta["secondary_labels"] != "[]").sum()),
               "soundscape_segments": len(labels),
               "nocall_segments": int((labels["birds"] == "nocall").sum())}
    (out / "demo_meta.json").write_text(json.dumps({"spec": dataclasses.asdict(spec), **summary},
                                                   indent=1) + "\n")
    meta.drop(columns="calls").to_csv(out / "train_metadata.csv", index=False)
    return summary


def main(argv=None) -> dict:
    return spec_cli(argv, "Write the BirdCLEF-layout demo dataset.", "data/birdclef_demo",
                    "birdclef", "BirdDemoSpec", "write_birdclef_demo")


if __name__ == "__main__":
    main()
