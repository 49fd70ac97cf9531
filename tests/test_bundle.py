"""common/bundle.py: one pasteable file per stage.

The import walk finds exactly the modules a script can import (relative imports, imports in
functions, subpackages, parent `__init__`s, namespace packages) on a made-up kit; every
numbered script bundles with its docstring and CFG block first and no exec/eval; and the
bundled 01 and 02 run on a tiny demo in an empty folder with the repository off sys.path,
writing what the repository's scripts write (same files, tables and checkpoint shapes)."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from common import bundle
from tests.conftest import ROOT, run_script

FAKE_KIT = {
    "01_stage.py": '"""Stage: prints what the kit computes."""\nfrom __future__ import annotations\n\n'
                   "import json\nfrom dataclasses import dataclass, field\n\n"
                   "from kit import a, plugins\nfrom kit.sub.deep import VALUE\n\n\n@dataclass\nclass CFG:\n"
                   "    n: int = field(default_factory=a.default_n)\n\n\n"
                   "def main(cfg):\n    print(json.dumps({'n': cfg.n, 'deep': VALUE, "
                   "'lazy': a.lazy(), 'plugins': sorted(plugins.FOUND), 'file': a.__file__}))\n\n\n"
                   "if __name__ == '__main__':\n    main(CFG())\n",
    "kit/__init__.py": "",
    "kit/a.py": "from . import b\n\n\ndef default_n():\n    return b.N + 1\n\n\n"
                "def lazy():\n    from .sub import lazy_mod\n    return lazy_mod.WORD\n",
    "kit/b.py": "import importlib\n\nimport numpy\n\nimport tools\n\n"
                "N = tools.BASE + importlib.import_module('ns.x').X\n",
    "kit/sub/__init__.py": "from kit.sub.helper import H  # noqa: F401\n",
    "kit/sub/helper.py": "H = 1\n",
    "kit/sub/deep.py": "from ..b import N\nVALUE = N * 10\n",
    "kit/sub/lazy_mod.py": "WORD = 'lazy'\n",
    "kit/sub/unused.py": "raise RuntimeError('never imported')\n",
    "kit/unused.py": "import kit.sub.unused\n",
    "kit/plugins/__init__.py": "import importlib\nimport pkgutil\n\n"  # a registry: names computed
                               "FOUND = {m.name: importlib.import_module(f'{__name__}.{m.name}')\n"
                               "         for m in pkgutil.iter_modules(__path__)}\n",
    "kit/plugins/one.py": "",
    "kit/plugins/two/__init__.py": "",
    "ns/x.py": "X = 2\n",          # a namespace package (no __init__.py)
    "tools.py": "BASE = 40\n",      # a top-level module of the kit
}
FAKE_USED = ["kit/__init__.py", "kit/a.py", "kit/b.py", "kit/plugins/__init__.py", "kit/plugins/one.py",
             "kit/plugins/two/__init__.py", "kit/sub/__init__.py", "kit/sub/deep.py",
             "kit/sub/helper.py", "kit/sub/lazy_mod.py", "ns/x.py", "tools.py"]


def clean_env(tmp: Path) -> dict:
    """The environment of a kernel without the repository: no PYTHONPATH, its own temp dir
    (where the bundle unpacks its kit)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}


def run_bundled(folder: Path, name: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, name, *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture()
def fake_kit(tmp_path):
    root = tmp_path / "repo"
    for rel, text in FAKE_KIT.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_kit_files_are_exactly_what_the_imports_reach(fake_kit):
    found = bundle.kit_files(fake_kit / "01_stage.py", fake_kit)
    assert [p.relative_to(fake_kit).as_posix() for p in found] == FAKE_USED


def test_fake_bundle_runs_alone_and_replaces_another_kit(fake_kit, tmp_path):
    out = tmp_path / "out"
    bundle.write_bundles(bundle.CFG(out_dir=str(out), root=str(fake_kit), notebooks=False))
    run_dir, temp = tmp_path / "empty", tmp_path / "tmp"
    run_dir.mkdir()
    temp.mkdir()
    shutil.copy(out / "01_stage.py", run_dir)
    env = clean_env(temp)
    result = json.loads(run_bundled(run_dir, "01_stage.py", env=env).stdout)
    assert result["n"] == 43 and result["deep"] == 420 and result["lazy"] == "lazy"
    assert result["plugins"] == ["one", "two"]
    kit_dir = Path(result["file"]).parents[1]
    assert kit_dir.parent == temp and kit_dir.name.startswith("sed-kit-")
    assert sorted(p.relative_to(kit_dir).as_posix() for p in kit_dir.rglob("*.py")) == FAKE_USED
    # a kit imported earlier in the same process (an earlier notebook cell) gives way
    probe = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); import kit.a; "
             "assert kit.a.default_n() == 43; "
             "g = runpy.run_path('01_stage.py', run_name='not_main'); "
             "import kit.a as again; print(again.__file__, g['a'].__file__)")
    shown = subprocess.run([sys.executable, "-c", probe, str(fake_kit)], cwd=run_dir, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [result["file"]] * 2


def test_every_stage_bundles_with_docstring_and_cfg_first(tmp_path):
    written = bundle.write_bundles(bundle.CFG(out_dir=str(tmp_path)))
    scripts = bundle.numbered_scripts(ROOT)
    assert len(scripts) >= 5 and len(written) == 2 * len(scripts)
    for script in scripts:
        text = (tmp_path / script.name).read_text()
        tree = ast.parse(text)
        original = script.read_text()
        assert ast.get_docstring(tree, clean=False) == ast.get_docstring(ast.parse(original), clean=False)
        defs = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
        assert defs[0].name == "_kit_bootstrap" and defs[1].name == "CFG", script.name
        # the script itself is carried unchanged, after the bootstrap
        rest = original.split("from __future__ import annotations\n", 1)[1]
        assert rest in text
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name)}
        assert not calls & {"exec", "eval", "compile"}
        again = bundle.bundle_script(script).source
        assert again == text  # deterministic: same kit, same bytes
        book = nbformat.read(str(tmp_path / f"{script.stem}.ipynb"), as_version=4)
        nbformat.validate(book)
        kinds = [c.cell_type for c in book.cells]
        assert kinds == ["markdown", "code", "code"]
        assert script.name in book.cells[0].source
        assert book.cells[1].source.startswith("from __future__ import annotations")
        assert "class CFG" in book.cells[1].source and "__main__" in book.cells[2].source
        ast.parse(book.cells[1].source + "\n" + book.cells[2].source)


def test_bundles_carry_only_the_modules_their_imports_reach():
    files = {f.relative_to(ROOT).as_posix() for f in bundle.kit_files(ROOT / "02_train_stage1.py")}
    assert {"common/__init__.py", "common/cli.py", "common/sed.py", "common/train.py"} <= files
    assert "common/bundle.py" not in files and not any(f.startswith("tests/") for f in files)
    # stage 1 never writes a demo dataset; 01 does (imported inside ensure_demo)
    assert not any("demo" in f for f in files)
    pre = {f.relative_to(ROOT).as_posix() for f in bundle.kit_files(ROOT / "01_preprocess.py")}
    assert any("demo" in f for f in pre) and not any("sed" in Path(f).stem for f in pre)


TINY_DEMO = ["--cfg_file=demo.json", "--demo_n_train=36", "--demo_n_test=10",
             "--demo_duration=10", "--workers=2"]
TINY_TRAIN = ["--cfg_file=demo.json", "--epochs=1", "--folds=0", "--min_epoch_steps=0"]


def only_run(work: Path, stage: str) -> Path:
    found = [p for p in (work / stage).iterdir() if (p / "manifest.json").exists()]
    assert len(found) == 1, found
    return found[0]


def same_table(a: Path, b: Path, values: bool = True) -> None:
    left, right = pd.read_csv(a), pd.read_csv(b)
    assert list(left.columns) == list(right.columns) and left.shape == right.shape, a.name
    if values:
        pd.testing.assert_frame_equal(left, right, check_exact=False, atol=1e-4)


def test_bundled_01_and_02_run_without_the_repository(tmp_path):
    kernel, temp = tmp_path / "kernel", tmp_path / "tmp"  # an empty folder, as a Kaggle kernel
    kernel.mkdir()
    temp.mkdir()
    bundle.write_bundles(bundle.CFG(scripts=["01_preprocess.py", "02_train_stage1.py"],
                                    out_dir=str(kernel), notebooks=False))
    shutil.copy(ROOT / "profiles" / "demo.json", kernel / "demo.json")
    env = clean_env(temp)
    gone = subprocess.run([sys.executable, "-c", "import common"], cwd=kernel, env=env,
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode != 0 and "No module named 'common'" in gone.stderr
    logs = {"01": run_bundled(kernel, "01_preprocess.py", *TINY_DEMO, env=env).stdout}
    logs["02"] = run_bundled(kernel, "02_train_stage1.py", *TINY_TRAIN, env=env).stdout
    assert "46/46 files cached" in logs["01"] and "stage1 CV LWLRAP" in logs["02"]
    kits = sorted(temp.glob("sed-kit-*"))
    assert len(kits) == 2 and all((k / "common" / "cli.py").is_file() for k in kits)
    # the repository's scripts on the same data write the same artifacts
    mine, repo = kernel / "work", tmp_path / "repo_work"
    io = [f"--input_dir={kernel / 'data' / 'demo'}", f"--work_dir={repo}"]
    profile = f"--cfg_file={ROOT / 'profiles' / 'demo.json'}"
    run_script("01_preprocess", profile, *TINY_DEMO[1:], *io)
    run_script("02_train_stage1", profile, *TINY_TRAIN[1:], *io)
    pre_a, pre_b = only_run(mine, "preprocess"), only_run(repo, "preprocess")
    for name in ("recordings.csv", "annotations.csv", "folds.csv"):
        same_table(pre_a / name, pre_b / name)
    assert json.loads((pre_a / "classes.json").read_text()) == \
        json.loads((pre_b / "classes.json").read_text())
    waves = sorted(p.name for p in (pre_a / "waves").glob("*.npy"))
    assert len(waves) == 46 and waves == sorted(p.name for p in (pre_b / "waves").glob("*.npy"))
    assert np.array_equal(np.load(pre_a / "waves" / waves[0]), np.load(pre_b / "waves" / waves[0]))
    s1_a, s1_b = only_run(mine, "stage1"), only_run(repo, "stage1")
    assert sorted(p.name for p in s1_a.iterdir()) == sorted(p.name for p in s1_b.iterdir())
    for name in ("oof.csv", "test_pred.csv", "trained_on.csv"):
        same_table(s1_a / name, s1_b / name)
    same_table(s1_a / "history.csv", s1_b / "history.csv", values=False)
    ckpt_a = torch.load(s1_a / "fold0.pth", map_location="cpu", weights_only=False)
    ckpt_b = torch.load(s1_b / "fold0.pth", map_location="cpu", weights_only=False)
    assert ckpt_a["model_cfg"] == ckpt_b["model_cfg"]
    shapes = {k: tuple(v.shape) for k, v in ckpt_a["state_dict"].items()}
    assert shapes == {k: tuple(v.shape) for k, v in ckpt_b["state_dict"].items()}
    metrics = json.loads((s1_a / "metrics.json").read_text())
    assert metrics.keys() == json.loads((s1_b / "metrics.json").read_text()).keys()
