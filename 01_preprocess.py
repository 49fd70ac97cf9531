"""Stage 0: raw recordings -> waveform cache, annotation table, classes, folds and test truth.

Reads  INPUT_DIR in one of the input layouts (common/layouts/), found by what it holds or
       named with --layout=: RFCx (train/, test/, train_tp.csv, train_fp.csv,
       sample_submission.csv), BirdCLEF 2021 (train_metadata.csv, train_short_audio/,
       train_soundscape_labels.csv, test_soundscapes/), BirdCLEF 2023-2025 (train.csv or
       train_metadata.csv, train_audio/, taxonomy, sample_submission.csv with a column per
       class, test_soundscapes/; --max_unlabeled: unlabeled soundscapes as recordings
       without annotations for self-training), Raven selection tables (one per recording, or with a
       Begin File column), or one CSV/TSV of boxes (OpenSoundscape's and ketos' column names
       read unchanged); audio (WAV/FLAC/OGG/MP3) in any folder tree. Kaggle's
       /kaggle/input/rfcx-species-audio-detection is used when present, else data/demo, which
       is generated on first use (no download; data/birdclef_demo likewise).
Writes WORK_DIR/preprocess/<tag>/: waves/<recording_id>.npy (float16 at `sample_rate`),
       recordings.csv, annotations.csv, folds.csv, classes.json (classes, sample rate,
       label_unit, the species of each class), report.json, manifest.json; test_truth.csv
       (clip labels, per species) and test_events.csv (class, t_min, t_max) when the test
       recordings have truth;
       soundscapes.csv (labelled 5 s segments of clip data, never in a fold);
       test_segments.csv (row_id, recording_id, t_min, t_max: the 5 s segments of the test
       soundscapes a BirdCLEF submission has a row for).

Box annotations (Raven, box tables): a box's class is present in its span; with
--fully_annotated=true every other class is absent (-1) in the known time of an annotated
recording, else unboxed time is unknown; annotated_windows.csv limits the known time;
recordings in background/ hold no class (-1 everywhere); labels in background_labels (noise,
background, other) are -1 rows; a test folder or split column marks test recordings, else
a seeded, class-stratified `test_fraction` is held out (common/layouts/known.py).

Examples:
    python 01_preprocess.py                                   # demo data, recipe settings
    python 01_preprocess.py --cfg_file=profiles/demo.json     # the CPU demo profile
    python 01_preprocess.py --cfg_file=profiles/birdclef2023_demo.json  # BirdCLEF 2023-2025 demo
    python 01_preprocess.py --input_dir=/kaggle/input/birdclef-2025 --min_rating=3
    python 01_preprocess.py --input_dir=/data/rfcx --sample_rate=32000 --workers=8
    python 01_preprocess.py --input_dir=/data/rfcx --classes=species_songtype  # 26 classes
    python 01_preprocess.py --input_dir=my_raven_project --fully_annotated=true --label_column=Species
    python 01_preprocess.py --input_dir=bats --boxes_file=boxes.csv --test_fraction=0.3
    python 01_preprocess.py --tag=rfcx --shard=0/4   # machine 0 of 4, then, all shards in place:
    python 01_preprocess.py --tag=rfcx --shard=merge
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from common import audio, data, layouts, paths, runs, shards
from common.cli import cfg_dict, run
from common.demos import ensure_demo
from common.species import SpeciesMap


LONG_FACTOR = 4  # a recording this many times longer than the median is flagged in report.json


@dataclass
class CFG:
    input_dir: str = field(default_factory=paths.default_input_dir)  # competition folder
    work_dir: str = field(default_factory=paths.default_work_dir)    # everything is written here
    tag: str = ""              # run name; default: a timestamp
    resume: str = ""           # tag of a crashed run to continue; "" = the newest one of this config
    fresh: bool = False        # true: a new run even when a crashed one of this config exists
    sample_rate: int = 0       # Hz of the cache; 0 = the highest source rate (RFCx: 48 kHz,
                               # the recipe's); lower it to save disk and compute
    n_folds: int = 5           # folds over TP recordings
    seed: int = 42             # fold split seed
    workers: int = 0           # decoding processes; 0 = all cores
    demo_seed: int = 0         # demo dataset, generated when input_dir is data/demo and empty
    demo_n_train: int = 500    # demo train recordings
    demo_n_test: int = 100     # demo test recordings
    demo_duration: float = 20.0  # demo recording length, s
    secondary_labels: bool = True  # BirdCLEF: clips also get +1 rows for their secondary labels
    min_rating: float = 0.0    # BirdCLEF 2023-2025: leave out clips rated below this (0-5;
                               # unrated clips, rating 0, are kept); 0 = keep all
    max_unlabeled: int = 0     # BirdCLEF 2023-2025: unlabeled soundscapes (train_soundscapes/,
                               # unlabeled_soundscapes/) cached for 03 to pseudo-label (self-
                               # training); 0 = none, -1 = all, N = a draw of N (seed)
    # input layout (common/layouts/)
    layout: str = "auto"       # auto | birdclef2023 | birdclef2021 | rfcx | raven | boxes
    classes: str = "species"   # species: one class per submission column | species_songtype
                               # (RFCx): one per (species, songtype) pair of the TP/FP tables,
                               # scored and submitted per species (max over its song types)
    boxes_file: str = ""       # box table below input_dir; "" = the one CSV/TSV with box columns
    file_column: str = "audio_file|filename|file"   # box columns: accepted names, | separated,
    start_column: str = "start_time|start"          # exact first, then any case
    end_column: str = "end_time|end"
    low_f_column: str = "low_f|freq_min"            # Hz; optional (absent: 0)
    high_f_column: str = "high_f|freq_max"          # Hz; optional (absent: sr/2)
    label_column: str = "annotation|label"          # also Raven's label column (Annotation)
    test_column: str = "split"  # rows whose value is "test" mark test recordings; "" = none
    test_folder: str = "test"   # audio below a folder of this name is test; "" = none
    test_fraction: float = 0.2  # without marks: share of annotated recordings held out (seed)
    fully_annotated: bool = False  # every call of every class is boxed: unboxed = absent (-1)
    annotated_windows: str = "annotated_windows.csv"  # file,start,end: the only known time
    background: str = "background"  # folder (or list file) of recordings holding no class
    background_labels: list[str] = field(default_factory=lambda: ["noise", "background", "other"])
    #                            box labels that mean "none of the classes" (any case)
    shard: str = ""            # "i/n": cache files i, i+n, ... only (same --tag everywhere);
                               # "merge": finish the run from its shards (common/shards.py)


def cache_one(job: tuple) -> dict:
    """Decode, resample and cache one file; never raises (a failure becomes a report entry).
    A file cached by a crashed run of this command is kept when still valid (see cached)."""
    rid, split, path, cache_dir, sr = job
    rec = {"recording_id": rid, "split": split, "path": path, "source": source_stamp(path)}
    done = cached(cache_dir, rec)
    if done is not None:
        return done
    try:  # streamed block by block: a worker's memory does not grow with the recording
        info = audio.cache_audio(path, cache_dir, rid, sr)
    except audio.AudioError as err:
        return {**rec, "ok": False, "reason": str(err)}
    rec = {**rec, "ok": True, "source_sr": info["sample_rate"], "channels": info["channels"],
           "duration": info["n_samples"] / sr, "n_samples": info["n_samples"],
           "warnings": info["warnings"]}
    runs.save_json(Path(cache_dir) / f"{rid}.json", rec)  # after the .npy: marks it complete
    return rec


def source_stamp(path: str) -> list | None:
    try:
        stat = os.stat(path)
    except OSError:  # cache_audio reports the missing file
        return None
    return [stat.st_size, stat.st_mtime_ns]


def cached(cache_dir, rec: dict) -> dict | None:
    """The stored result of a cache file that is complete (its .json is written last) and
    current (same source file, size and time, and the .npy has the recorded length)."""
    meta = Path(cache_dir) / f"{rec['recording_id']}.json"
    try:
        done = json.loads(meta.read_text())
        length = np.load(audio.cache_path(cache_dir, rec["recording_id"]), mmap_mode="r").shape[0]
    except (OSError, ValueError):
        return None
    same = all(done.get(k) == rec[k] for k in ("path", "split", "source"))
    return done if same and length == done.get("n_samples") else None


def single_thread() -> None:
    """Worker start: one torch thread per process (the workers already fill the cores; and a
    forked process must not use the OpenMP pool it inherited, as torch's DataLoader does)."""
    import torch
    torch.set_num_threads(1)


def decode_all(files: list, cache_dir: Path, cfg: CFG) -> list[dict]:
    jobs = [(rid, split, path, cache_dir, cfg.sample_rate) for rid, split, path in files]
    workers = cfg.workers or os.cpu_count() or 1
    if workers == 1:
        return [cache_one(j) for j in tqdm(jobs, desc="decode")]
    # largest files first, one file per task: no worker idles at the end behind a long tail
    order = sorted(range(len(jobs)), key=lambda i: -(source_stamp(jobs[i][2]) or [0])[0])
    results: list = [None] * len(jobs)
    with ProcessPoolExecutor(min(workers, max(len(jobs), 1)), initializer=single_thread) as pool:
        done = pool.map(cache_one, [jobs[i] for i in order], chunksize=1)
        for i, res in zip(order, tqdm(done, total=len(jobs), desc="decode")):
            results[i] = res
    return results


def build_report(results: list[dict], seconds: float) -> dict:
    ok = [r for r in results if r["ok"]]
    durations = np.array([r["duration"] for r in ok]) if ok else np.zeros(1)
    return {
        "files": len(results), "cached": len(ok), "failed": len(results) - len(ok),
        "seconds": round(seconds, 1),
        "duration_s": {"min": float(durations.min()), "median": float(np.median(durations)),
                       "max": float(durations.max()), "total": float(durations.sum())},
        "source_sample_rates": pd.Series([r["source_sr"] for r in ok]).value_counts().to_dict(),
        "channels": pd.Series([r["channels"] for r in ok]).value_counts().to_dict(),
        "unreadable": [{"file": r["path"], "reason": r["reason"]} for r in results if not r["ok"]],
        "warnings": [{"file": r["path"], "warning": w} for r in ok for w in r["warnings"]],
    }


def audio_warnings(report: dict, results: list[dict], rows_per_recording: dict) -> None:
    """Print the skipped files with the annotations lost with each; flag recordings much
    longer than the others and a mix of source sample rates (all are resampled)."""
    for bad, res in zip(report["unreadable"], [r for r in results if not r["ok"]]):
        n = bad["annotations_lost"] = int(rows_per_recording.get(res["recording_id"], 0))
        print(f"WARNING: skipped {bad['file']}: {bad['reason']}"
              + (f" ({n} annotation rows lost with it)" if n else ""), flush=True)
    report["annotations_lost_with_unreadable_files"] = sum(b["annotations_lost"]
                                                           for b in report["unreadable"])
    median = report["duration_s"]["median"]
    for res in results:
        if res["ok"] and res["duration"] > LONG_FACTOR * median:
            note = f"{res['duration']:.0f} s long, over {LONG_FACTOR}x the median {median:.0f} s"
            report["warnings"].append({"file": res["path"], "warning": note})
    if len(report["warnings"]):
        print(f"WARNING: {len(report['warnings'])} recordings were fixed on the way (downmixed, "
              "non-finite or silent samples, unusual length); see 'warnings' in report.json",
              flush=True)
    if len(report["source_sample_rates"]) > 1:
        print(f"WARNING: the recordings come at {len(report['source_sample_rates'])} sample rates "
              f"{report['source_sample_rates']} (all resampled)", flush=True)


def resolve_sample_rate(cfg: CFG, files: list) -> int:
    """cfg.sample_rate, or with 0 the highest source rate among the readable files (every
    frequency a recording holds stays below the cache's sr/2), printed."""
    if cfg.sample_rate > 0:
        return int(cfg.sample_rate)
    rates = {}
    for _, _, path in files:
        try:
            rate = audio.probe(path)["sample_rate"]
        except audio.AudioError:  # reported when decoding
            continue
        rates[rate] = rates.get(rate, 0) + 1
    chosen = max(rates) if rates else 48000
    print(f"sample_rate: {chosen} Hz, the highest source rate (files per rate: "
          f"{dict(sorted(rates.items()))}); set --sample_rate= to choose another", flush=True)
    return chosen


def write_tables(run_dir: Path, cfg: CFG, inputs, ok: pd.DataFrame, ann: pd.DataFrame,
                 truth, events) -> list[str]:
    """recordings, annotations, folds, test truth, soundscapes, classes.json; their names."""
    train_ids = set(ok.loc[ok["split"] == "train", "recording_id"])  # never soundscapes
    # stratified by species: song-type classes split recordings into the same folds as
    # classes=species, so the CV of the two compares on the same validation recordings
    species = SpeciesMap(inputs.classes, inputs.species_of)
    by_species = ann.assign(**{"class": ann["class"].map(species.species)})
    folds = data.make_folds(by_species[by_species["recording_id"].isin(train_ids)],
                            species.columns, cfg.n_folds, cfg.seed)
    recordings = ok.assign(path=[str(Path(p).resolve()) for p in ok["path"]])  # the source file
    columns = ["recording_id", "split", "duration", "n_samples", "source_sr", "channels", "path"]
    runs.save_csv(run_dir / "recordings.csv", recordings[columns])
    runs.save_csv(run_dir / "annotations.csv", ann)
    runs.save_csv(run_dir / "folds.csv", folds)
    written = ["waves/", "recordings.csv", "annotations.csv", "folds.csv", "classes.json",
               "report.json"]
    for name, frame in (("test_truth.csv", truth), ("test_events.csv", events)):
        if frame is not None:
            runs.save_csv(run_dir / name, frame)
            written.append(name)
    if inputs.segments is not None:
        kept = inputs.segments["recording_id"].isin(set(ok["recording_id"]))
        runs.save_csv(run_dir / "soundscapes.csv", inputs.segments[kept])
        written.append("soundscapes.csv")
    if inputs.test_segments is not None:  # BirdCLEF: the rows of the segment submission
        runs.save_csv(run_dir / "test_segments.csv", inputs.test_segments(ok))
        written.append("test_segments.csv")
    runs.save_json(run_dir / "classes.json", {
        "classes": inputs.classes, "sample_rate": cfg.sample_rate,
        "label_unit": inputs.label_unit, "layout": inputs.layout,
        "submission": inputs.submission, **species.to_json()})
    return written


def main(cfg: CFG) -> Path:
    tic = time.time()
    layouts.check_classes(cfg)  # before the demo is written
    ensure_demo(cfg.input_dir, cfg.demo_seed, cfg.workers or os.cpu_count(), cfg.demo_n_train,
                cfg.demo_n_test, cfg.demo_duration)
    input_dir = Path(cfg.input_dir)
    inputs = layouts.read(input_dir, cfg)  # validates the tables before any decoding
    files = inputs.files
    cfg.sample_rate = resolve_sample_rate(cfg, files)
    if cfg.shard and cfg.shard != "merge":
        return shards.run_shard(cfg.work_dir, cfg.tag, cfg.shard, files,
                                lambda mine, cache_dir: decode_all(mine, cache_dir, cfg))
    run_dir, resumed = runs.begin_run(cfg.work_dir, "preprocess", cfg_dict(cfg),
                                      {"input_dir": str(input_dir)}, cfg.tag, cfg.resume, cfg.fresh)
    if resumed:
        print(f"continuing the crashed run {run_dir}: valid cache files are kept", flush=True)
    if cfg.shard == "merge":
        results = shards.merge(run_dir, files)
        shards.check_cached(results, lambda rid: audio.cache_path(run_dir / "waves", rid))
    else:
        results = decode_all(files, run_dir / "waves", cfg)
    report = build_report(results, time.time() - tic)
    ok = pd.DataFrame([r for r in results if r["ok"]])
    audio_warnings(report, results, inputs.rows_per_recording)
    ann, truth, events = inputs.annotate(ok, report, cfg.sample_rate)
    report["input"] = {"layout": inputs.layout, "label_unit": inputs.label_unit, **inputs.notes,
                       "test_truth_recordings": 0 if truth is None else len(truth),
                       "test_events": 0 if events is None else len(events)}
    outputs = write_tables(run_dir, cfg, inputs, ok, ann, truth, events)
    report["seconds"] = round(time.time() - tic, 1)
    runs.save_json(run_dir / "report.json", report)
    metrics = {k: report[k] for k in ("files", "cached", "failed", "seconds")}
    runs.write_manifest(run_dir, "preprocess", cfg_dict(cfg), {"input_dir": str(input_dir)},
                        outputs, metrics, finished=True)
    runs.update_summary(cfg.work_dir, "preprocess", {**metrics, "tag": run_dir.name})
    print(f"preprocess ({inputs.layout} layout): {report['cached']}/{report['files']} files cached "
          f"({report['duration_s']['total'] / 3600:.2f} h of audio), {report['failed']} skipped "
          f"(listed in {run_dir / 'report.json'}), {len(ann)} annotation rows, "
          f"{int((ok['split'] == 'test').sum())} test recordings"
          + (f", {int((ok['split'] == 'unlabeled').sum())} unlabeled (no fold)"
             if (ok["split"] == "unlabeled").any() else "") + ", "
          f"{report['seconds']:.0f}s -> {run_dir}", flush=True)
    return run_dir


if __name__ == "__main__":
    run(main, CFG, "preprocess")
