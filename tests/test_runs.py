"""common/runs.py: atomic writes, run folders and manifests, the summary, the experiments table."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from common import runs
from common.cli import ConfigError


def leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_write_writes_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    runs.atomic_write(path, lambda f: f.write("hello"))
    assert path.read_text() == "hello"
    assert leftovers(path.parent, {"a.txt"}) == []


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    path = tmp_path / "a.json"
    runs.save_json(path, {"v": 1})

    def broken(handle):
        handle.write('{"v": 2, "half')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        runs.atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"v": 1}
    assert leftovers(tmp_path, {"a.json"}) == []


def test_atomic_write_binary_and_keyboard_interrupt(tmp_path):
    path = tmp_path / "w.bin"
    runs.atomic_write(path, lambda f: f.write(b"\x00\x01"), mode="wb")
    assert path.read_bytes() == b"\x00\x01"

    def interrupted(handle):
        handle.write(b"xx")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.atomic_write(path, interrupted, mode="wb")
    assert path.read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path, {"w.bin"}) == []


def test_save_csv_round_trip_without_index(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    runs.save_csv(tmp_path / "t.csv", frame)
    back = pd.read_csv(tmp_path / "t.csv")
    assert list(back.columns) == ["a", "b"]
    pd.testing.assert_frame_equal(back, frame)


# ----------------------------------------------------------------------------- run folders
def make_run(work, stage, tag, finished, time):
    run_dir = work / stage / tag
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps(
        {"stage": stage, "tag": tag, "finished": finished, "time": time}))
    return run_dir


def test_start_run_creates_folder_and_refuses_existing_run(tmp_path):
    run_dir = runs.start_run(tmp_path, "stage1", tag="t1")
    assert run_dir == tmp_path / "stage1" / "t1" and run_dir.is_dir()
    runs.write_manifest(run_dir, "stage1", {"lr": 0.1}, {}, [], {"cv": 0.5}, finished=True)
    with pytest.raises(ConfigError, match="already exists"):
        runs.start_run(tmp_path, "stage1", tag="t1")


def test_start_run_default_tag_is_fresh(tmp_path):
    run_dir = runs.start_run(tmp_path, "stage1", name="demo")
    assert run_dir.parent == tmp_path / "stage1"
    assert run_dir.name.endswith("_demo")


def test_write_manifest_content(tmp_path):
    run_dir = runs.start_run(tmp_path, "stage1", tag="t")
    runs.write_manifest(run_dir, "stage1", {"lr": 0.1}, {"preprocess": "p"}, ["fold0.pth"],
                        {"cv_lwlrap": 0.8}, finished=True)
    m = runs.read_manifest(run_dir)
    assert m["stage"] == "stage1" and m["tag"] == "t" and m["finished"] is True
    assert m["config"] == {"lr": 0.1} and m["inputs"] == {"preprocess": "p"}
    assert m["outputs"] == ["fold0.pth"] and m["metrics"] == {"cv_lwlrap": 0.8}
    assert "torch" in m["packages"] and "python" in m["packages"]


def test_find_run_latest_is_newest_finished_by_time(tmp_path):
    # names sort opposite to the times, so ordering by name would pick the wrong one
    make_run(tmp_path, "stage1", "z_old", True, "2024-01-01T00:00:00")
    make_run(tmp_path, "stage1", "a_new", True, "2024-06-01T00:00:00")
    make_run(tmp_path, "stage1", "m_unfinished", False, "2025-01-01T00:00:00")
    assert runs.find_run(tmp_path, "stage1") == tmp_path / "stage1" / "a_new"
    assert runs.find_run(tmp_path, "stage1", "latest") == tmp_path / "stage1" / "a_new"
    assert runs.list_runs(tmp_path, "stage1") == ["z_old", "a_new"]


def test_find_run_ignores_corrupt_manifest(tmp_path):
    make_run(tmp_path, "stage1", "good", True, "2024-01-01T00:00:00")
    bad = tmp_path / "stage1" / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"finished": tr')
    assert runs.find_run(tmp_path, "stage1").name == "good"


def test_find_run_by_tag(tmp_path):
    make_run(tmp_path, "stage1", "old", True, "2024-01-01T00:00:00")
    make_run(tmp_path, "stage1", "new", True, "2024-06-01T00:00:00")
    assert runs.find_run(tmp_path, "stage1", "old") == tmp_path / "stage1" / "old"


def test_find_run_named_unfinished_raises(tmp_path):
    make_run(tmp_path, "stage1", "crashed", False, "2024-01-01T00:00:00")
    with pytest.raises(ConfigError, match="unfinished"):
        runs.find_run(tmp_path, "stage1", "crashed")


def test_find_run_missing_tag_or_no_finished_run(tmp_path):
    with pytest.raises(ConfigError, match="no finished stage1 run"):
        runs.find_run(tmp_path, "stage1")
    make_run(tmp_path, "stage1", "crashed", False, "2024-01-01T00:00:00")
    with pytest.raises(ConfigError, match="no finished stage1 run"):
        runs.find_run(tmp_path, "stage1", "latest")
    with pytest.raises(ConfigError, match="nope"):
        runs.find_run(tmp_path, "stage1", "nope")


# ----------------------------------------------------------------------------- summary
def test_update_summary_merges_sections(tmp_path):
    runs.update_summary(tmp_path, "stage1", {"cv_lwlrap": 0.8, "seconds": 10})
    runs.update_summary(tmp_path, "stage1", {"test_lwlrap": 0.7, "seconds": 12})
    runs.update_summary(tmp_path, "ensemble", {"test_lwlrap": 0.9})
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data == {"stage1": {"cv_lwlrap": 0.8, "seconds": 12, "test_lwlrap": 0.7},
                    "ensemble": {"test_lwlrap": 0.9}}


def test_update_summary_serialises_numpy_scalars(tmp_path):
    import numpy as np
    runs.update_summary(tmp_path, "stage1", {"cv_lwlrap": np.float32(0.5), "n": np.int64(3)})
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["stage1"] == {"cv_lwlrap": 0.5, "n": 3}


# ----------------------------------------------------------------------------- experiments
def test_append_experiment_rows_and_bold_best_per_stage(tmp_path):
    runs.append_experiment(tmp_path, {"run": "r1", "stage": "stage1", "backbone": "b0",
                                      "cv_lwlrap": 0.81})
    runs.append_experiment(tmp_path, {"run": "r2", "stage": "stage1", "backbone": "b2",
                                      "cv_lwlrap": 0.85})
    runs.append_experiment(tmp_path, {"run": "r3", "stage": "stage3", "backbone": "b2",
                                      "cv_lwlrap": 0.7, "memo": "mixup"})
    runs.append_experiment(tmp_path, {"run": "r4", "stage": "stage1", "backbone": "b4",
                                      "cv_lwlrap": 0.83})
    table = pd.read_csv(tmp_path / "experiments.csv")
    assert table["run"].tolist() == ["r1", "r2", "r3", "r4"]
    assert table["cv_lwlrap"].tolist() == [0.81, 0.85, 0.7, 0.83]
    assert list(table.columns[:len(runs.EXPERIMENT_COLUMNS)]) == runs.EXPERIMENT_COLUMNS
    md = (tmp_path / "experiments.md").read_text()
    assert "## stage1" in md and "## stage3" in md
    assert "**0.8500**" in md and "**0.7000**" in md
    assert "**0.8100**" not in md and "**0.8300**" not in md
    assert md.count("**") == 4  # exactly two bold cells
    stage1 = md[md.index("## stage1"):md.index("## stage3")]
    assert all(r in stage1 for r in ("r1", "r2", "r4")) and "r3" not in stage1
    best_line = next(line for line in md.splitlines() if "**0.8500**" in line)
    assert "|r2|" in best_line
    assert "mixup" in md


def test_append_experiment_extra_column_and_missing_score(tmp_path):
    runs.append_experiment(tmp_path, {"run": "r1", "stage": "stage2"})
    runs.append_experiment(tmp_path, {"run": "r2", "stage": "stage2", "cv_lwlrap": 0.5,
                                      "seconds": 12})
    table = pd.read_csv(tmp_path / "experiments.csv")
    assert len(table) == 2 and "seconds" in table.columns
    assert table.loc[1, "seconds"] == 12
    md = (tmp_path / "experiments.md").read_text()
    assert "**0.5000**" in md and "|r1|" in md


def test_append_experiment_row_without_stage_is_not_lost(tmp_path):
    runs.append_experiment(tmp_path, {"run": "nostage", "cv_lwlrap": 0.6})
    runs.append_experiment(tmp_path, {"run": "r2", "stage": "stage1", "cv_lwlrap": 0.5})
    md = (tmp_path / "experiments.md").read_text()
    assert "nostage" in md and "r2" in md


def test_render_markdown_escapes_pipes():
    table = pd.DataFrame([{"run": "a", "stage": "s", "cv_lwlrap": 0.5, "memo": "x|y"}])
    md = runs.render_markdown(table)
    assert "x/y" in md and "**0.5000**" in md
