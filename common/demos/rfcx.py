"""Embedded demo dataset: synthetic field recordings in the RFCx layout, no download needed.

    python -m common.demos.rfcx --out data/demo      # default spec: ~37 CPU-s, ~20 s on 2 free cores
    python -m common.demos.rfcx --out /tmp/tiny --n_train 12 --n_test 6 --duration 8

Writes train/*.flac, test/*.flac (mono PCM_16), train_tp.csv, train_fp.csv,
sample_submission.csv, test_truth.csv (complete 0/1 test labels), test_events.csv (every call
of a species test_truth lists in a test recording: the reference events), demo_events.csv (every
sound placed, for checks) and demo_meta.json. It is hard the way RFCx is: 24 species in
their real bands and durations (docs/recipe.md, "RFCx species table") with distinct
call shapes and a few look-alike pairs; train labels are sparse (one species, one or two calls annotated per
recording while others call unannotated); FP rows mark look-alikes in the species' band
(a call of another species, an unlisted decoy of the same family, or a noise burst); test
prevalence is skewed (s3 in ~90 % of clips, s18 in ~45 %, several under 3 %); background
noise, rain and insect drones; calls at -5..20 dB in-band SNR. Byte-identical output for
a given spec and any number of workers: the global plan has its own RNG and each
recording its own, from SeedSequence([seed, split, index]).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf

from common.demos.calls import SPECIES
from common.demos.noise import release_noise_bank
from common.demos.plan import N_SPECIES, PREVALENCE, plan_recordings
from common.demos.scene import Scene

RFCX_COLUMNS = ["recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max"]
EVENT_COLUMNS = ["split", "recording_id", "kind", "species_id", "songtype_id", "t_min", "f_min",
                 "t_max", "f_max", "snr_db", "annotation"]
_SPLITS = {"train": 1, "test": 2}


@dataclass
class DemoSpec:
    seed: int = 0                   # everything derives from it
    n_train: int = 500              # train recordings
    n_test: int = 100               # test recordings
    duration: float = 20.0          # seconds per recording (real RFCx is 60 s)
    sample_rate: int = 48000        # Hz written (real RFCx is 48 kHz); >= 28000 for s22
    fp_only_frac: float = 0.2       # share of train recordings with FP rows but no TP row
    two_species_frac: float = 0.12  # share of TP recordings with two annotated species
    second_row_prob: float = 0.15   # chance an annotated species gets a second TP row
    calls_per_species: float = 1.5  # mean calls of a species present in a recording (>= 1)
    fp_rows: float = 3.0            # mean FP rows of an FP-only recording (TP recordings: half)
    distractors: float = 1.0        # mean unlabelled decoys/noise bursts per recording
    snr_min_db: float = -5.0        # in-band SNR of calls over the background noise, dB
    snr_max_db: float = 20.0
    tp_snr_min_db: float = 6.0      # annotated calls and FP look-alikes are the clearer ones
    audible_snr_db: float = 0.0     # each species of a test clip calls once at least this loud
    rain_prob: float = 0.25         # share of recordings with rain bursts
    drone_prob: float = 0.35        # share of recordings with an insect drone (2-9 kHz)
    train_background: float = 0.1   # prevalence multiplier of unannotated species in TP recordings
    background_fp_prob: float = 0.8  # chance a drone or rain burst in a species' band gets an FP row

    def __post_init__(self):
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"DemoSpec.seed must be a non-negative integer, got {self.seed!r}")
        for name in ("n_train", "n_test", "sample_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DemoSpec.{name} must be a positive integer, got {value!r}")
        if not self.duration >= 2.0:
            raise ValueError(f"DemoSpec.duration must be at least 2 s, got {self.duration!r}")
        if self.sample_rate < 28000:
            top = max(sp["f_hi"] for sp in SPECIES)
            raise ValueError(f"DemoSpec.sample_rate must be >= 28000 Hz so species up to {top:.0f} Hz "
                             f"fit below Nyquist, got {self.sample_rate}")
        for name in ("fp_only_frac", "two_species_frac", "second_row_prob", "rain_prob", "drone_prob",
                     "train_background", "background_fp_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DemoSpec.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not self.calls_per_species >= 1.0:
            raise ValueError(f"DemoSpec.calls_per_species must be >= 1, got {self.calls_per_species!r}")
        for name in ("fp_rows", "distractors"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"DemoSpec.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.snr_min_db <= self.audible_snr_db <= self.snr_max_db:
            raise ValueError("DemoSpec needs snr_min_db <= audible_snr_db <= snr_max_db, got "
                             f"{self.snr_min_db}, {self.audible_snr_db}, {self.snr_max_db}")
        if not self.snr_min_db <= self.tp_snr_min_db <= self.snr_max_db:
            raise ValueError("DemoSpec needs snr_min_db <= tp_snr_min_db <= snr_max_db, got "
                             f"{self.snr_min_db}, {self.tp_snr_min_db}, {self.snr_max_db}")


# ----------------------------------------------------------------------------- one recording
def _render(job: tuple) -> dict:
    """Synthesise and write one recording; return its TP/FP rows, events and species heard."""
    spec, rec, out_dir = job
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _SPLITS[rec["split"]], rec["index"]]))
    scene, tp, fp = Scene(spec, rng), [], []
    lo_snr, tp_snr, hi_snr = spec.snr_min_db, spec.tp_snr_min_db, spec.snr_max_db
    for s in rec["annotated"] + [s for s in rec["species"] if s not in rec["annotated"]]:
        rows = (1 + int(rng.random() < spec.second_row_prob)) if s in rec["annotated"] else 0
        placed = False  # test truth lists what an annotator hears: one audible call at least
        for k in range(1 + rng.poisson(spec.calls_per_species - 1)):
            annotate = k < rows  # the first calls placed are the clear, annotated ones
            floor = max(lo_snr, spec.audible_snr_db) if rec["split"] == "test" and not placed \
                else lo_snr
            snr = rng.uniform(tp_snr if annotate else floor, hi_snr)
            ev = scene.call(s, snr, note="tp" if annotate else "")
            placed = placed or ev is not None
            if ev is not None and annotate:
                tp.append(ev)
    if rec["split"] == "train":
        for k in range(8 * rec["n_fp"]):  # retries: a crowded recording may refuse a box
            if len(fp) == rec["n_fp"]:
                break
            planned = k < 2 * rec["n_fp"]
            s = rec["fp_species"][k % len(rec["fp_species"])] if planned else rng.integers(N_SPECIES)
            row = scene.fp_row(int(s))
            fp += [row] if row is not None else []
        extra = rng.poisson(spec.distractors)
    else:  # test clips: as many distractors as train has FP look-alikes plus distractors
        fp_per_train = spec.fp_rows * (spec.fp_only_frac + (1 - spec.fp_only_frac) / 2)
        extra = rng.poisson(spec.distractors + fp_per_train)
    for _ in range(extra):
        scene.lookalike(int(rng.integers(N_SPECIES)))
    scene.background()
    if rec["split"] == "train":  # the detector also fires on insect drones and rain
        fp += scene.background_fp_rows(spec.background_fp_prob)
    audio = scene.audio
    audio *= np.float32(32767 * rng.uniform(0.3, 0.9) / np.abs(audio).max())  # random gain, no clipping
    path = Path(out_dir) / rec["split"] / f"{rec['rid']}.flac"
    sf.write(str(path) + ".part", np.rint(audio, out=audio).astype(np.int16), spec.sample_rate,
             format="FLAC", subtype="PCM_16", compression_level=0.0)  # fastest level: 15 % less time
    os.replace(str(path) + ".part", path)
    rid, split = rec["rid"], rec["split"]
    heard = sorted({e["species_id"] for e in scene.events if e["kind"] == "call"})
    row = lambda e: [rid] + [e[c] for c in RFCX_COLUMNS[1:]]  # noqa: E731
    return dict(split=split, rid=rid, heard=heard, tp=[row(e) for e in tp], fp=[row(e) for e in fp],
                events=[[split, rid] + [e[c] for c in EVENT_COLUMNS[2:]] for e in scene.events])


# ----------------------------------------------------------------------------- writing
def _csv(path: Path, header: list[str], rows) -> None:
    """Write a CSV atomically; floats rounded to 4 decimals so the bytes are reproducible."""
    def cell(v) -> str:
        return str(round(float(v), 4)) if isinstance(v, (float, np.floating)) else str(v)

    text = "\n".join([",".join(header)] + [",".join(cell(v) for v in row) for row in rows]) + "\n"
    Path(str(path) + ".part").write_text(text)
    os.replace(str(path) + ".part", path)


def write_rfcx_demo(out_dir, spec: DemoSpec = DemoSpec(), workers: int = 2) -> dict:
    """Write the dataset to out_dir and return a summary (counts, seconds taken).

    Refuses a folder that holds a real train_tp.csv (one without demo_meta.json); removes
    FLAC files of an earlier demo that the new spec does not produce.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    if (out / "train_tp.csv").exists() and not (out / "demo_meta.json").exists():
        raise ValueError(f"{out} holds a train_tp.csv but no demo_meta.json: it looks like real data, "
                         "refusing to overwrite it; pass an empty or demo folder")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    plan = plan_recordings(spec)
    for split in _SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    jobs = [(spec, rec, str(out)) for rec in plan]
    if workers == 1:
        results = [_render(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_render, jobs, chunksize=4))
    wanted = {f"{r['split']}/{r['rid']}.flac" for r in results}
    for split in _SPLITS:  # stale recordings of an earlier, larger demo
        for path in (out / split).glob("*.flac"):
            if f"{split}/{path.name}" not in wanted:
                path.unlink()
    results.sort(key=lambda r: (r["split"], r["rid"]))
    train = [r for r in results if r["split"] == "train"]
    test = [r for r in results if r["split"] == "test"]
    by_box = lambda row: (row[0], row[1], row[3])  # noqa: E731
    tp = sorted((row for r in train for row in r["tp"]), key=by_box)
    fp = sorted((row for r in train for row in r["fp"]), key=by_box)
    truth = np.array([[int(s in r["heard"]) for s in range(N_SPECIES)] for r in test])
    classes = [f"s{s}" for s in range(N_SPECIES)]
    events = [row for r in results for row in sorted(r["events"], key=lambda e: e[5])]
    _csv(out / "demo_events.csv", EVENT_COLUMNS, events)
    # the test recordings' reference events (05's event F1): every call of a species the
    # recording's test_truth lists (rows: split, rid, kind, species, songtype, t_min, .., t_max)
    heard = {r["rid"]: set(r["heard"]) for r in test}
    _csv(out / "test_events.csv", ["recording_id", "class", "t_min", "t_max"],
         [[e[1], f"s{e[3]}", e[5], e[7]] for e in events
          if e[0] == "test" and e[2] == "call" and e[3] in heard.get(e[1], ())])
    _csv(out / "train_fp.csv", RFCX_COLUMNS, fp)
    header = ["recording_id"] + classes
    _csv(out / "sample_submission.csv", header, [[r["rid"]] + [0] * N_SPECIES for r in test])
    _csv(out / "test_truth.csv", header, [[r["rid"]] + row.tolist() for r, row in zip(test, truth)])
    counts = dict(
        n_train=len(train), n_test=len(test), tp_rows=len(tp), fp_rows=len(fp),
        tp_recordings=sum(bool(r["tp"]) for r in train),
        fp_only_recordings=sum(bool(r["fp"]) and not r["tp"] for r in train),
        tp_rows_per_species=np.bincount([row[1] for row in tp], minlength=N_SPECIES).tolist(),
        fp_rows_per_species=np.bincount([row[1] for row in fp], minlength=N_SPECIES).tolist(),
        test_prevalence=[round(float(v), 4) for v in truth.mean(0)],
        test_species_per_clip=round(float(truth.sum(1).mean()), 4))
    meta = dict(spec=asdict(spec), counts=counts, species=SPECIES, prevalence=PREVALENCE)
    Path(out / "demo_meta.json.part").write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(out / "demo_meta.json.part", out / "demo_meta.json")
    _csv(out / "train_tp.csv", RFCX_COLUMNS, tp)  # last: its presence marks a finished dataset
    release_noise_bank()
    return dict(counts, out_dir=str(out), seconds=round(time.perf_counter() - start, 2))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Write the synthetic RFCx-layout demo dataset.")
    parser.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    for f in fields(DemoSpec):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default,
                            help=f"DemoSpec.{f.name} (default {f.default})")
    args = vars(parser.parse_args(argv))
    out, workers = args.pop("out"), args.pop("workers")
    from common.demos import rfcx as demo  # so workers unpickle common.demos.rfcx objects, not __main__ ones
    summary = demo.write_rfcx_demo(out, demo.DemoSpec(**args), workers=workers)
    s, tp, prev = summary, summary["tp_rows_per_species"], summary["test_prevalence"]
    print(f"demo dataset in {s['out_dir']} ({s['seconds']:.1f} s): {s['n_train']} train "
          f"({s['tp_recordings']} with TP, {s['fp_only_recordings']} FP-only), {s['n_test']} test; "
          f"TP rows {s['tp_rows']} ({min(tp)}-{max(tp)} per species), FP rows {s['fp_rows']}; "
          f"test: s3 in {prev[3]:.0%}, s18 in {prev[18]:.0%}, "
          f"{s['test_species_per_clip']:.2f} species per clip")
    return summary


if __name__ == "__main__":
    main()
