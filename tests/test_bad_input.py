"""What a user's mistake looks like: bad configuration (part 3 of the reliability issue),
bad tables (part 2) and bad audio (part 1). Each case asserts the message a user reads, or
the report.json entry, and that no heavy work (a run folder) started before the error."""
from __future__ import annotations

import pytest

from common import runs
from common.cli import ConfigError, parse_cfg
from tests.test_ensemble import fake_work_dir

STAGE1 = ["--backbone=resnet10t", "--in_chans=1", "--crop_seconds=1", "--n_fft=256",
          "--hop_length=128", "--n_mels=32", "--fmin=50", "--fmax=4000", "--image_size=",
          "--epochs=1", "--device=cpu"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """The shared fake work dir (preprocess run p0 with 2 s recordings, finished stage-1 run
    r0), plus an unfinished (crashed) preprocessing and stage-1 run."""
    work, data = fake_work_dir(tmp_path_factory.mktemp("bad_config"))
    runs.write_manifest(work / "preprocess" / "crashed", "preprocess", {}, {}, [], {}, finished=False)
    runs.write_manifest(work / "stage1" / "crashed", "stage1", {}, {}, [], {}, finished=False)
    runs.write_manifest(work / "stage1" / "r0", "stage1", {}, {"preprocess": "p0"}, [],
                        {"folds": [0, 1]}, finished=True)
    return work, data


@pytest.mark.parametrize("script, override, message", [
    ("02_train_stage1", "--n_mels=200", "n_mels=200 exceeds the 129 STFT bins of n_fft=256"),
    ("02_train_stage1", "--crop_seconds=30", "crop_seconds=30.0 is longer than every training "
                                             r"recording \(the longest is 2.00 s\)"),
    ("02_train_stage1", "--backbone=resnet10x", "unknown backbone 'resnet10x'.*resnet10t"),
    ("02_train_stage1", "--pretrained_path=/nowhere/w.pth", "pretrained_path /nowhere/w.pth does not exist"),
    ("02_train_stage1", "--preprocess=nosuch", "no preprocess run 'nosuch'"),
    ("02_train_stage1", "--preprocess=crashed", "preprocess run .*crashed is unfinished"),
    ("02_train_stage1", "--folds=0,5", r"folds \[5\] do not exist"),
    ("04_train_stage3", "--init=crashed", "stage1 run .*crashed is unfinished"),
    ("04_train_stage3", "--init=nosuch", "no stage1 run 'nosuch'"),
    ("04_train_stage3", "--crop_seconds=9", "crop_seconds=9.0 is longer than every training"),
    ("03_pseudo_label", "--source_tag=crashed", "stage1 run .*crashed is unfinished"),
])
def test_bad_configuration_stops_before_any_run_starts(fake, scripts, script, override, message):
    work, data = fake
    module = scripts(script)
    stage_name = {"02_train_stage1": "stage1", "04_train_stage3": "stage3",
                  "03_pseudo_label": "pseudo"}[script]
    before = sorted(p.name for p in work.glob("*/*"))
    args = [*STAGE1, "--preprocess=p0"] if script == "02_train_stage1" else \
        ["--stage=stage3", "--init_from=stage1", "--pseudo=", "--device=cpu"] if script == "04_train_stage3" \
        else ["--source=stage1", "--device=cpu"]
    cfg = parse_cfg(module.CFG, stage_name, [*args, f"--work_dir={work}", f"--input_dir={data}",
                                             override])
    with pytest.raises(ConfigError, match=message):
        module.main(cfg)
    assert sorted(p.name for p in work.glob("*/*")) == before  # no run folder was started
