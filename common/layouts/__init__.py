"""Input layouts: one module per way data arrives, all behind one interface (base.Inputs).

    rfcx          train/, test/, train_tp.csv, train_fp.csv (RFCx, the embedded demo, nips4b)
    birdclef2023  train.csv or train_metadata.csv, train_audio/, taxonomy, sample_submission.csv
                  with a column per class, test_soundscapes/, unlabeled soundscapes
                  (BirdCLEF 2023-2025)
    birdclef2021  train_metadata.csv, train_short_audio/, labelled train_soundscapes/
    raven         Raven selection tables, one per recording or with a Begin File column
    boxes         one CSV/TSV of boxes (OpenSoundscape, ketos and similar column names)

`read(input_dir, cfg)` picks the layout by what INPUT_DIR holds (in the order above), or by
`cfg.layout`, and returns its Inputs. A new layout is a module with NAME, detect and read,
added to LAYOUTS. The stages never see the layout: only the annotation table and the data
properties 01 writes (classes.json's label_unit).
"""
from __future__ import annotations

from pathlib import Path

from common.cli import ConfigError
from common.layouts import birdclef2021, birdclef2023, boxes, raven, rfcx
from common.layouts.base import Inputs

LAYOUTS = {m.NAME: m for m in (birdclef2023, birdclef2021, rfcx, raven, boxes)}


def detect(input_dir, cfg) -> str:
    """The name of the first layout whose files INPUT_DIR holds."""
    for name, module in LAYOUTS.items():
        if module.detect(input_dir, cfg):
            return name
    raise ConfigError(f"{input_dir}: no known input layout found. Expected one of: train_tp.csv "
                      "(RFCx), train.csv or train_metadata.csv with train_audio/ (BirdCLEF 2023-2025), "
                      "train_metadata.csv (BirdCLEF 2021), Raven selection tables "
                      "(*.selections.txt), or a CSV/TSV of boxes with file, start, end and label "
                      "columns (name them with --file_column= ...); or set --layout=")


def check_classes(cfg, layout: str = "") -> None:
    """`cfg.classes` is one of rfcx.CLASS_MODES, and song types only where the layout has them."""
    mode = getattr(cfg, "classes", "species")
    if mode not in rfcx.CLASS_MODES:
        raise ConfigError(f"classes={mode!r}: choose species (one class per species, a column of "
                          "the submission) or species_songtype (RFCx: one class per (species, "
                          "songtype) pair of train_tp.csv / train_fp.csv)")
    if mode != "species" and layout and layout != rfcx.NAME:
        raise ConfigError(f"classes={mode}: song types come from the songtype_id column of "
                          "the RFCx layout's train_tp.csv / train_fp.csv; input_dir is read in "
                          f"the {layout} layout, so use classes=species")


def read(input_dir, cfg) -> Inputs:
    """Read and validate INPUT_DIR in the layout `cfg.layout` ("auto": detected)."""
    if not Path(input_dir).is_dir():
        raise ConfigError(f"input_dir {input_dir} is not a folder")
    check_classes(cfg)
    name = getattr(cfg, "layout", "auto") or "auto"
    if name == "auto":
        name = detect(input_dir, cfg)
    elif name not in LAYOUTS:
        raise ConfigError(f"layout={name!r}: choose auto or one of {', '.join(LAYOUTS)}")
    check_classes(cfg, name)
    return LAYOUTS[name].read(input_dir, cfg)
