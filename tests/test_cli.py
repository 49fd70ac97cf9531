"""common/cli.py: `--key=value` overrides, override files, notebook detection."""
from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from common.cli import ConfigError, parse_cfg
from tests.conftest import ROOT


@dataclass
class CFG:
    epochs: int = 30
    lr: float = 1e-3
    amp: bool = False
    backbone: str = "tf_efficientnet_b2"
    folds: list[int] = field(default_factory=list)
    seed: Optional[int] = None
    note: Optional[str] = None
    limit: int | None = None
    extra: Any = None
    batch_size: int = 20


@dataclass
class DerivedCFG:
    sample_rate: int = 32000
    crop_seconds: float = 10.0
    crop_samples: int = 0

    def finalize(self):
        self.crop_samples = int(round(self.sample_rate * self.crop_seconds))


def write_profile(tmp_path, data: dict) -> str:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return str(path)


# ----------------------------------------------------------------------------- types
def test_no_arguments_gives_defaults():
    cfg = parse_cfg(CFG, "stage1", argv=[])
    assert cfg == CFG()


def test_int_float_bool_str_overrides():
    cfg = parse_cfg(CFG, "stage1", argv=["--epochs=5", "--lr=0.01", "--amp=true",
                                         "--backbone=resnet18"])
    assert cfg.epochs == 5 and type(cfg.epochs) is int
    assert cfg.lr == pytest.approx(0.01) and type(cfg.lr) is float
    assert cfg.amp is True
    assert cfg.backbone == "resnet18"


def test_int_accepted_for_float_field():
    cfg = parse_cfg(CFG, "stage1", argv=["--lr=2"])
    assert cfg.lr == 2.0 and type(cfg.lr) is float


@pytest.mark.parametrize("text,expected", [("true", True), ("1", True), ("yes", True),
                                           ("False", False), ("0", False), ("off", False)])
def test_bool_spellings(text, expected):
    assert parse_cfg(CFG, "s", argv=[f"--amp={text}"]).amp is expected


def test_bad_bool_and_bad_int_raise_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="amp"):
        parse_cfg(CFG, "s", argv=["--amp=maybe"])
    with pytest.raises(ConfigError, match="epochs"):
        parse_cfg(CFG, "s", argv=["--epochs=1.5"])
    with pytest.raises(ConfigError, match="epochs"):
        parse_cfg(CFG, "s", argv=["--epochs=ten"])


def test_string_value_may_contain_equals_sign():
    assert parse_cfg(CFG, "s", argv=["--backbone=a=b"]).backbone == "a=b"


def test_dashes_in_key_become_underscores():
    assert parse_cfg(CFG, "s", argv=["--batch-size=4"]).batch_size == 4


@pytest.mark.parametrize("text,expected", [("0,2", [0, 2]), ("[1, 3]", [1, 3]),
                                           ("4,", [4]), ("0", [0]), ("3", [3])])
def test_list_of_int(text, expected):
    # `--folds=0` is the quick example in 02_train_stage1.py's docstring
    cfg = parse_cfg(CFG, "s", argv=[f"--folds={text}"])
    assert cfg.folds == expected
    assert all(type(v) is int for v in cfg.folds)


def test_empty_list_resets_to_every_fold():
    cfg = parse_cfg(CFG, "s", argv=["--folds="])
    assert cfg.folds == []


def test_any_typed_none_default_takes_any_json_type():
    # "any type for a None default": JSON values keep their type, other text stays a string
    assert parse_cfg(CFG, "s", argv=["--extra=3"]).extra == 3
    assert parse_cfg(CFG, "s", argv=["--extra=[1, 2]"]).extra == [1, 2]
    assert parse_cfg(CFG, "s", argv=["--extra=abc"]).extra == "abc"


def test_any_typed_none_default_same_type_from_file_and_command_line(tmp_path):
    path = write_profile(tmp_path, {"s": {"extra": 3}})
    from_file = parse_cfg(CFG, "s", argv=[f"--cfg_file={path}"]).extra
    from_argv = parse_cfg(CFG, "s", argv=["--extra=3"]).extra
    assert from_file == 3
    assert from_argv == from_file and type(from_argv) is type(from_file)


def test_list_of_int_rejects_non_integers():
    with pytest.raises(ConfigError, match="folds"):
        parse_cfg(CFG, "s", argv=["--folds=0,x"])


def test_none_default_fields():
    cfg = parse_cfg(CFG, "s", argv=["--seed=7", "--note=hello", "--limit=3"])
    assert cfg.seed == 7 and type(cfg.seed) is int
    assert cfg.note == "hello"
    assert cfg.limit == 3
    back = parse_cfg(CFG, "s", argv=["--seed=none", "--note=null"])
    assert back.seed is None and back.note is None


def test_finalize_computes_derived_values_after_overrides():
    cfg = parse_cfg(DerivedCFG, "s", argv=["--sample_rate=16000", "--crop_seconds=2"])
    assert cfg.crop_samples == 32000


# ----------------------------------------------------------------------------- errors
def test_unknown_key_suggests_the_close_name():
    with pytest.raises(ConfigError) as info:
        parse_cfg(CFG, "s", argv=["--epoch=3"])
    message = str(info.value)
    assert "epoch" in message and "--epochs" in message


def test_unknown_key_without_close_name_still_lists_known_settings():
    with pytest.raises(ConfigError) as info:
        parse_cfg(CFG, "s", argv=["--zzzzzz=1"])
    assert "zzzzzz" in str(info.value) and "backbone" in str(info.value)


@pytest.mark.parametrize("arg", ["epochs=3", "--epochs", "-epochs=3", "3"])
def test_malformed_argument(arg):
    with pytest.raises(ConfigError, match="--key=value"):
        parse_cfg(CFG, "s", argv=[arg])


# ----------------------------------------------------------------------------- override files
def test_override_file_all_section_applies_only_existing_fields(tmp_path):
    path = write_profile(tmp_path, {"all": {"epochs": 4, "lr": 1, "not_a_field_here": 3},
                                    "stage1": {"backbone": "resnet10t", "folds": [0, 2]}})
    cfg = parse_cfg(CFG, "stage1", argv=[f"--cfg_file={path}"])
    assert cfg.epochs == 4
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.backbone == "resnet10t"
    assert cfg.folds == [0, 2]
    assert not hasattr(cfg, "not_a_field_here")


def test_override_file_other_stage_section_is_ignored(tmp_path):
    path = write_profile(tmp_path, {"stage3": {"epochs": 99, "whatever": 1}})
    cfg = parse_cfg(CFG, "stage1", argv=[f"--cfg_file={path}"])
    assert cfg.epochs == 30


def test_override_file_stage_section_is_strict(tmp_path):
    path = write_profile(tmp_path, {"stage1": {"epoch": 4}})
    with pytest.raises(ConfigError) as info:
        parse_cfg(CFG, "stage1", argv=[f"--cfg_file={path}"])
    assert "--epochs" in str(info.value) and "stage1" in str(info.value)


def test_command_line_wins_over_file_whatever_the_order(tmp_path):
    path = write_profile(tmp_path, {"all": {"epochs": 4}, "stage1": {"lr": 0.5}})
    cfg = parse_cfg(CFG, "stage1", argv=["--epochs=7", f"--cfg_file={path}", "--lr=0.25"])
    assert cfg.epochs == 7
    assert cfg.lr == 0.25


def test_stage_defaults_are_overridden_by_file(tmp_path):
    path = write_profile(tmp_path, {"stage1": {"epochs": 4}})
    cfg = parse_cfg(CFG, "stage1", argv=[f"--cfg_file={path}"], defaults={"epochs": 5, "lr": 0.1})
    assert cfg.epochs == 4 and cfg.lr == 0.1


def test_missing_or_invalid_override_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_cfg(CFG, "s", argv=[f"--cfg_file={tmp_path / 'nope.json'}"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_cfg(CFG, "s", argv=[f"--cfg_file={bad}"])


# ----------------------------------------------------------------------------- notebooks
def test_argv_is_read_outside_a_notebook(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "argv", ["02_train_stage1.py", "--epochs=3"])
    assert parse_cfg(CFG, "s").epochs == 3


def test_notebook_ignores_argv(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    # a kernel's argv: would be a malformed / unknown argument if it were parsed
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/ipykernel_launcher.py", "-f",
                                      "/tmp/kernel.json", "--epochs=3"])
    cfg = parse_cfg(CFG, "s")
    assert cfg == CFG()


STAGE_SCRIPTS = {"preprocess": "01_preprocess", "stage1": "02_train_stage1",
                 "stage2": "04_train_stage3", "pseudo": "03_pseudo_label",
                 "stage3": "04_train_stage3", "ensemble": "05_ensemble"}


@pytest.mark.parametrize("profile", sorted(p.name for p in (ROOT / "profiles").glob("*.json")
                                           if "sweep" not in p.name))
def test_every_profile_parses_for_every_stage(profile, scripts):
    """A profile names only settings the stages know: a renamed setting left in a profile
    stops `make demo ... PROFILE=` at that stage, after the stages before it ran."""
    for stage_name, script in STAGE_SCRIPTS.items():
        module = scripts(script)
        parse_cfg(module.CFG, stage_name, argv=[f"--cfg_file={ROOT / 'profiles' / profile}"])
