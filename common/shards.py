"""Preprocessing split over machines: `--shard=i/n` decodes every n-th file, `--shard=merge`
finishes the run from the shards.

Every shard writes into WORK_DIR/preprocess/<tag>/ (the same --tag on every machine):
waves/<recording_id>.npy for its files and shards/<i>-of-<n>.json with its per-file results;
it writes no manifest, so the run is not usable before the merge. Without a shared disk,
copy the <tag> folders of all machines into one (file names never collide), then run
`01_preprocess.py --shard=merge --tag=<tag>`: it checks that the shards are complete and
disjoint and cover exactly the files of INPUT_DIR, then writes the tables as one run would.
"""
from __future__ import annotations

import json
from pathlib import Path

from common import runs
from common.cli import ConfigError


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8), shard 2 of 8 (0-based)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"shard={text!r}: write it as INDEX/COUNT (e.g. --shard=0/4), "
                          "or --shard=merge") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard={text!r}: INDEX must be in 0..COUNT-1")
    return index, count


def select(files: list, index: int, count: int) -> list:
    """Files index, index + count, ... of the sorted list of (recording_id, split, path)
    (the same on every machine that sees the same INPUT_DIR)."""
    return sorted((str(r), str(s), str(p)) for r, s, p in files)[index::count]


def shard_file(run_dir: Path, index: int, count: int) -> Path:
    return Path(run_dir) / "shards" / f"{index}-of-{count}.json"


def run_shard(work_dir, tag: str, text: str, files: list, decode) -> Path:
    """Decode one shard with `decode(files, cache_dir) -> results` and record its results."""
    if not tag:
        raise ConfigError("--shard needs --tag: every shard and the merge use the same tag")
    index, count = parse_shard(text)
    run_dir = Path(work_dir) / "preprocess" / tag
    if (run_dir / "manifest.json").exists():
        raise ConfigError(f"run {run_dir} is already merged; pick another --tag")
    mine = select(files, index, count)
    results = decode(mine, run_dir / "waves")
    out = shard_file(run_dir, index, count)
    runs.save_json(out, {"index": index, "count": count,
                         "files": [list(f) for f in mine], "results": results})
    print(f"preprocess shard {index}/{count}: {sum(r['ok'] for r in results)}/{len(mine)} files "
          f"cached -> {out}; merge with --shard=merge --tag={tag}", flush=True)
    return out


def merge(run_dir: Path, files: list) -> list[dict]:
    """The results of all shards of `run_dir`, in file order; stops with a message when a
    shard is missing, two disagree on the count, or they do not cover `files` exactly."""
    found = sorted((Path(run_dir) / "shards").glob("*-of-*.json"))
    if not found:
        raise ConfigError(f"no shard results in {Path(run_dir) / 'shards'}: run "
                          "01_preprocess.py --shard=i/n --tag=<this tag> first")
    parts = [json.loads(p.read_text()) for p in found]
    counts = {p["count"] for p in parts}
    if len(counts) != 1:
        raise ConfigError(f"{run_dir}/shards mixes shard counts {sorted(counts)}; "
                          "delete the shards of the split you no longer use")
    count = counts.pop()
    missing = sorted(set(range(count)) - {p["index"] for p in parts})
    if missing:
        raise ConfigError(f"shards {missing} of {count} are missing in {run_dir}/shards: run "
                          f"01_preprocess.py --shard={missing[0]}/{count} (or copy its folder in)")
    by_path = {}
    for part in parts:
        if [tuple(f) for f in part["files"]] != select(files, part["index"], count):
            raise ConfigError(f"{shard_file(run_dir, part['index'], count)} lists other files "
                              "than INPUT_DIR holds now; run that shard again")
        for result in part["results"]:
            by_path[result["path"]] = result
    return [by_path[str(path)] for _, _, path in files]


def check_cached(results: list[dict], cache_path) -> None:
    """Every file a shard cached must be in waves/ (a folder copied in part shows here)."""
    for result in results:
        if result["ok"] and not cache_path(result["recording_id"]).exists():
            raise ConfigError(f"{cache_path(result['recording_id'])} is missing although a "
                              f"shard cached {result['path']}; copy that shard's waves/ again")
