"""Stage 0: raw recordings -> waveform cache, annotation table, classes and folds.

Reads  INPUT_DIR in the RFCx layout (train/*.flac, test/*.flac, train_tp.csv, train_fp.csv,
       sample_submission.csv), or in the BirdCLEF 2021 layout (train_metadata.csv with
       train_short_audio/<label>/*.ogg, train_soundscape_labels.csv with train_soundscapes/),
       detected by train_metadata.csv; data/birdclef_demo is generated on first use. Kaggle's /kaggle/input/rfcx-species-audio-detection is used
       when present, else data/demo, which is generated on first use (no download).
Writes WORK_DIR/preprocess/<tag>/: waves/<recording_id>.npy (float16 at `sample_rate`),
       recordings.csv, annotations.csv, folds.csv, classes.json, report.json, manifest.json;
       BirdCLEF: soundscapes.csv (the labelled 5 s segments, never in a fold).

Examples:
    python 01_preprocess.py                                   # demo data, recipe settings
    python 01_preprocess.py --cfg_file=profiles/demo.json     # the CPU demo profile
    python 01_preprocess.py --input_dir=/data/rfcx --sample_rate=32000 --workers=8
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

from common import audio, birdclef, data, paths, runs, shards, tables
from common.cli import ConfigError, cfg_dict, run


LONG_FACTOR = 4  # a recording this many times longer than the median is flagged in report.json


@dataclass
class CFG:
    input_dir: str = field(default_factory=paths.default_input_dir)  # competition folder
    work_dir: str = field(default_factory=paths.default_work_dir)    # everything is written here
    tag: str = ""              # run name; default: a timestamp
    resume: str = ""           # tag of a crashed run to continue; "" = the newest one of this config
    fresh: bool = False        # true: a new run even when a crashed one of this config exists
    sample_rate: int = 48000   # Hz of the cache (the recipe trains at 48 kHz)
    n_folds: int = 5           # folds over TP recordings
    seed: int = 42             # fold split seed
    workers: int = 0           # decoding processes; 0 = all cores
    demo_seed: int = 0         # demo dataset, generated when input_dir is data/demo and empty
    demo_n_train: int = 500    # demo train recordings
    demo_n_test: int = 100     # demo test recordings
    demo_duration: float = 20.0  # demo recording length, s
    secondary_labels: bool = True  # BirdCLEF: clips also get +1 rows for their secondary labels
    shard: str = ""            # "i/n": cache files i, i+n, ... only (same --tag everywhere);
                               # "merge": finish the run from its shards (common/shards.py)


def ensure_demo(cfg: CFG) -> None:
    """Generate the embedded demo dataset if input_dir is the demo folder and it is empty."""
    if paths.is_demo_input(cfg.input_dir, paths.BIRDCLEF_DEMO_INPUT) and \
            not birdclef.is_birdclef(cfg.input_dir):
        from common.demos.birdclef import BirdDemoSpec, write_birdclef_demo
        print(f"writing the BirdCLEF-layout demo dataset to {cfg.input_dir}", flush=True)
        write_birdclef_demo(cfg.input_dir, BirdDemoSpec(seed=cfg.demo_seed),
                            workers=cfg.workers or os.cpu_count())
    if not paths.is_demo_input(cfg.input_dir) or (Path(cfg.input_dir) / "train_tp.csv").exists():
        return
    from common.demos.rfcx import DemoSpec, write_rfcx_demo
    spec = DemoSpec(seed=cfg.demo_seed, n_train=cfg.demo_n_train, n_test=cfg.demo_n_test,
                    duration=cfg.demo_duration)
    print(f"writing the demo dataset to {cfg.input_dir} ({spec})", flush=True)
    write_rfcx_demo(cfg.input_dir, spec, workers=cfg.workers or os.cpu_count())


def list_audio(input_dir: Path) -> list[tuple[str, str, str]]:
    """(recording_id, split, path) of every audio file under train/ and test/."""
    found = []
    for split in ("train", "test"):
        folder = input_dir / split
        if not folder.is_dir():
            raise ConfigError(f"{folder} is missing: input_dir must hold train/ and test/ "
                              "(the RFCx layout)")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in audio.AUDIO_EXTENSIONS:
                found.append((path.stem, split, str(path)))
    return found


def read_inputs(input_dir: Path, cfg: CFG) -> tuple:
    """(annotation table as a function of the decoded durations {recording_id: s}, classes,
    audio files, soundscape segments or None), by layout; fails early on a bad CSV."""
    if birdclef.is_birdclef(input_dir):
        meta = birdclef.read_metadata(input_dir)
        segments, scapes = birdclef.read_soundscapes(input_dir)
        classes = birdclef.classes_of(meta)
        files = [(rid, "train", path) for rid, path in zip(meta["recording_id"], meta["path"])]
        files += [(rid, "soundscape", path) for rid, path in scapes]
        return (lambda durations: birdclef.annotations(meta, segments, durations, classes,
                                                       cfg.sample_rate, cfg.secondary_labels),
                classes, files, segments)
    ann = data.rfcx_annotations(input_dir)
    return (lambda durations: ann), data.rfcx_classes(input_dir, ann), list_audio(input_dir), None


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


def audio_warnings(report: dict, results: list[dict], ann: pd.DataFrame) -> None:
    """Print the skipped files with the annotations lost with each; flag recordings much
    longer than the others and a mix of source sample rates (all are resampled)."""
    lost = ann["recording_id"].value_counts()
    for bad, res in zip(report["unreadable"], [r for r in results if not r["ok"]]):
        n = bad["annotations_lost"] = int(lost.get(res["recording_id"], 0))
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


def main(cfg: CFG) -> Path:
    tic = time.time()
    ensure_demo(cfg)
    input_dir = Path(cfg.input_dir)
    make_annotations, classes, files, segments = read_inputs(input_dir, cfg)
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
    ann = make_annotations(dict(zip(ok["recording_id"], ok["duration"])))
    audio_warnings(report, results, ann)
    ann = tables.check_annotations(ann, ok, classes, report)
    train_ids = set(ok.loc[ok["split"] == "train", "recording_id"])  # never soundscapes
    folds = data.make_folds(ann[ann["recording_id"].isin(train_ids)], classes, cfg.n_folds, cfg.seed)
    runs.save_csv(run_dir / "recordings.csv",
                  ok[["recording_id", "split", "duration", "n_samples", "source_sr", "channels"]])
    runs.save_csv(run_dir / "annotations.csv", ann)
    runs.save_csv(run_dir / "folds.csv", folds)
    layout = "rfcx" if segments is None else "birdclef"
    if segments is not None:
        kept = segments["recording_id"].isin(set(ok["recording_id"]))
        runs.save_csv(run_dir / "soundscapes.csv", segments[kept])
    runs.save_json(run_dir / "classes.json", {"classes": classes, "sample_rate": cfg.sample_rate,
                                              "layout": layout})
    report["seconds"] = round(time.time() - tic, 1)
    runs.save_json(run_dir / "report.json", report)
    outputs = ["waves/", "recordings.csv", "annotations.csv", "folds.csv", "classes.json", "report.json"]
    outputs += ["soundscapes.csv"] if segments is not None else []
    metrics = {k: report[k] for k in ("files", "cached", "failed", "seconds")}
    runs.write_manifest(run_dir, "preprocess", cfg_dict(cfg), {"input_dir": str(input_dir)},
                        outputs, metrics, finished=True)
    runs.update_summary(cfg.work_dir, "preprocess", {**metrics, "tag": run_dir.name})
    print(f"preprocess: {report['cached']}/{report['files']} files cached "
          f"({report['duration_s']['total'] / 3600:.2f} h of audio), {report['failed']} skipped "
          f"(listed in {run_dir / 'report.json'}), {len(ann)} annotation rows, "
          f"{report['seconds']:.0f}s -> {run_dir}", flush=True)
    return run_dir


if __name__ == "__main__":
    run(main, CFG, "preprocess")
