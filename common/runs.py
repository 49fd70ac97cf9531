"""Run folders, manifests, atomic artifact writes, the summary and the experiments table.

Layout: WORK_DIR/<stage>/<tag>/ with a manifest.json that is marked finished only when the
stage has written everything; a later stage resolves `--stage1=latest` (or a tag) to the
newest *finished* run, so it never reads a half-written run.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import pandas as pd

from common.cli import ConfigError

PACKAGES = ("torch", "torchvision", "timm", "librosa", "soundfile", "soxr", "numpy",
            "pandas", "scikit-learn", "albumentations", "onnx", "onnxruntime")


# ----------------------------------------------------------------------------- atomic writes
def atomic_write(path: str | os.PathLike, write_fn, mode: str = "w") -> Path:
    """Call write_fn(file_object) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write_fn(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_json(path, obj) -> Path:
    return atomic_write(path, lambda f: json.dump(obj, f, indent=2, default=_json_default))


def save_csv(path, frame: pd.DataFrame, **kwargs) -> Path:
    kwargs.setdefault("index", False)
    return atomic_write(path, lambda f: frame.to_csv(f, **kwargs))


def save_torch(path, obj) -> Path:
    import torch
    return atomic_write(path, lambda f: torch.save(obj, f), mode="wb")


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


# ----------------------------------------------------------------------------- run folders
def new_tag(name: str = "") -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    return f"{stamp}_{name}" if name else stamp


def start_run(work_dir, stage: str, tag: str = "", name: str = "") -> Path:
    """Create WORK_DIR/<stage>/<tag>/ (a fresh tag unless one is given) and return it."""
    run_dir = Path(work_dir) / stage / (tag or new_tag(name))
    for n in range(2, 100):  # two runs started in the same second get distinct default tags
        if tag or not run_dir.exists():
            break
        run_dir = run_dir.with_name(f"{new_tag(name)}_{n}")
    if (run_dir / "manifest.json").exists():
        raise ConfigError(f"run {run_dir} already exists; pick another --tag or delete it")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_manifest(run_dir, stage: str, cfg: dict, inputs: dict, outputs: list,
                   metrics: dict, finished: bool) -> Path:
    run_dir = Path(run_dir)
    manifest = {
        "stage": stage, "tag": run_dir.name, "finished": finished,
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(), "pid": os.getpid(),  # who writes it (see begin_run)
        "inputs": inputs, "outputs": outputs, "metrics": metrics,
        "packages": package_versions(), "config": cfg,
    }
    return save_json(run_dir / "manifest.json", manifest)


def read_manifest(run_dir) -> dict:
    return json.loads((Path(run_dir) / "manifest.json").read_text())


# settings that may differ between a crashed run and the command that continues it
RESUME_FREE = ("tag", "resume", "fresh", "device", "num_workers", "workers", "infer_batch")


def config_diff(old: dict, new: dict) -> list[str]:
    """Keys whose values differ (after a JSON round trip), RESUME_FREE keys aside."""
    old, new = (json.loads(json.dumps(d, default=_json_default)) for d in (old, new))
    return sorted(k for k in set(old) | set(new)
                  if k not in RESUME_FREE and old.get(k, "<unset>") != new.get(k, "<unset>"))


def _running_elsewhere(manifest: dict) -> bool:
    """The run's writer is a live process on this machine (another command is running it)."""
    pid = manifest.get("pid")
    if manifest.get("host") != platform.node() or not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, OSError):
        return False
    return True


def _resumable(run_dir: Path, cfg: dict, inputs: dict) -> str:
    """'' when run_dir is an unfinished run of the same config and inputs, else why not."""
    try:
        manifest = read_manifest(run_dir)
    except (OSError, json.JSONDecodeError):
        return "its manifest.json is missing or unreadable"
    if manifest.get("finished"):
        return "it is finished"
    if _running_elsewhere(manifest):
        return f"process {manifest['pid']} is still running it"
    diff = config_diff(manifest.get("config", {}), cfg)
    if diff or manifest.get("inputs") != inputs:
        return f"it was started with other settings ({', '.join(diff) or 'inputs'})"
    return ""


def begin_run(work_dir, stage: str, cfg: dict, inputs: dict, tag: str = "", resume: str = "",
              fresh: bool = False) -> tuple[Path, bool]:
    """The run folder a stage writes to, and whether it continues a crashed run.

    Default: the newest unfinished run of `stage` whose config and inputs equal these
    (the same command run again after a crash), else a new run. `resume=<tag>` continues
    that run (an error says why it cannot); `fresh=True` always starts a new run. The
    unfinished manifest is written here; the stage marks it finished at its very end.
    """
    base = Path(work_dir) / stage
    if fresh and not resume:
        chosen = None  # start_run refuses a --tag that exists
    elif resume or tag:
        name = resume or tag
        why = _resumable(base / name, cfg, inputs)
        if why and (resume or (base / name / "manifest.json").exists()):
            raise ConfigError(f"cannot continue {stage} run {base / name}: {why}. Pick another "
                              "--tag, or pass --fresh=true (without --resume) for a new run")
        chosen = None if why else base / name
    else:
        names = sorted((m.parent.name for m in base.glob("*/manifest.json")),
                       key=lambda n: ((base / n / "manifest.json").stat().st_mtime, n), reverse=True)
        chosen = next((base / n for n in names if not _resumable(base / n, cfg, inputs)), None)
    run_dir = chosen or start_run(work_dir, stage, tag)
    write_manifest(run_dir, stage, cfg, inputs, [], {}, finished=False)
    return run_dir, chosen is not None


# ----------------------------------------------------------------------------- partial results
def partial_path(run_dir, name: str) -> Path:
    """Where a run keeps a finished piece of its work (03: one fold model's votes, 05: the
    test scores inferred so far) until the run is finished and drop_partials removes it.
    02/04 keep their fold results in fold{k}.state.pth, with the same save/load_partial."""
    return Path(run_dir) / "partial" / name


def save_partial(path, result) -> Path:
    """Store `result` atomically and marked done, for a re-run of a crashed run to keep."""
    return save_torch(path, {"done": True, "result": result})


def load_partial(path, check=None):
    """What save_partial stored at `path`, or None, and the work is redone, when there is
    no such file, it does not load (cut short), is not marked done, or `check(result)` is
    false (it does not fit the work asked for now)."""
    import torch
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: never trusted
        print(f"{path} does not load ({type(err).__name__}); redoing its work", flush=True)
        return None
    if not isinstance(state, dict) or not state.get("done"):
        return None
    if check is not None and not check(state["result"]):
        print(f"{path} does not fit this run; redoing its work", flush=True)
        return None
    return state["result"]


def drop_partials(run_dir) -> None:
    """Remove the partial results of a run that has written its outputs."""
    import shutil
    shutil.rmtree(Path(run_dir) / "partial", ignore_errors=True)


def find_run(work_dir, stage: str, tag: str = "latest") -> Path:
    """The run folder of `stage` named `tag`, or the newest finished one for 'latest'."""
    base = Path(work_dir) / stage
    if tag and tag != "latest":
        run_dir = base / tag
        if not (run_dir / "manifest.json").exists():
            raise ConfigError(f"no {stage} run '{tag}' in {base}: run that stage first "
                              f"or pick one of {list_runs(work_dir, stage) or 'none'}")
        if not read_manifest(run_dir).get("finished"):
            raise ConfigError(f"{stage} run {run_dir} is unfinished (it crashed or is still "
                              "running); run it again or pick another tag")
        return run_dir
    finished = list_runs(work_dir, stage)
    if not finished:
        raise ConfigError(f"no finished {stage} run under {base}: run the {stage} script first")
    return base / finished[-1]


def list_runs(work_dir, stage: str) -> list[str]:
    """Tags of the finished runs of `stage`, oldest first (by manifest time, then name)."""
    base = Path(work_dir) / stage
    found = []
    for manifest in base.glob("*/manifest.json"):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("finished"):
            found.append((data.get("time", ""), manifest.parent.name))
    return [tag for _, tag in sorted(found)]


# ----------------------------------------------------------------------------- summary
def update_summary(work_dir, section: str, figures: dict) -> Path:
    """Merge `figures` into work/summary.json under `section` (e.g. 'stage1')."""
    path = Path(work_dir) / "summary.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(section, {}).update(figures)
    return save_json(path, data)


# ----------------------------------------------------------------------------- experiments
EXPERIMENT_COLUMNS = ["run", "stage", "backbone", "resolution", "batch_size", "loss",
                      "cv_lwlrap", "cv_f1", "test_lwlrap", "local_f1", "soundscape_f1", "memo"]


def append_experiment(work_dir, row: dict) -> Path:
    """Append one row to WORK_DIR/experiments.csv and re-render experiments.md."""
    csv_path = Path(work_dir) / "experiments.csv"
    old = pd.read_csv(csv_path) if csv_path.exists() else pd.DataFrame(columns=EXPERIMENT_COLUMNS)
    new = pd.DataFrame([{c: row.get(c, "") for c in sorted(set(EXPERIMENT_COLUMNS) | set(row),
                                                           key=_column_order)}])
    table = pd.concat([old, new], ignore_index=True) if len(old) else new
    save_csv(csv_path, table)
    atomic_write(Path(work_dir) / "experiments.md", lambda f: f.write(render_markdown(table)))
    return csv_path


def _column_order(name: str) -> tuple:
    return (EXPERIMENT_COLUMNS.index(name) if name in EXPERIMENT_COLUMNS else 99, name)


def render_markdown(table: pd.DataFrame, group: str = "stage",
                    bold: tuple = ("cv_lwlrap", "local_f1", "soundscape_f1"),
                    title: str = "Experiments") -> str:
    """One table per group (as in the seed's log), the best value of each `bold` column
    within each group in bold."""
    cols = [c for c in table.columns]
    parts = []
    for key, sub in table.fillna({group: ""}).groupby(group, sort=False) if group in table else [("", table)]:
        best = {}
        for col in (c for c in bold if c in cols):
            values = pd.to_numeric(sub[col], errors="coerce")
            if values.notna().any():
                best[col] = values.idxmax()
        lines = ["|" + "|".join(cols) + "|", "|" + "|".join("---" for _ in cols) + "|"]
        for idx, rec in sub.iterrows():
            cells = [_fmt(rec[c]) for c in cols]
            for col in (c for c, i in best.items() if i == idx):
                cells[cols.index(col)] = f"**{cells[cols.index(col)]}**"
            lines.append("|" + "|".join(cells) + "|")
        parts.append(f"## {key}\n\n" + "\n".join(lines) + "\n")
    return f"# {title}\n\n" + "\n".join(parts)


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4f}"
    return "" if value is None else str(value).replace("|", "/")
