"""CFG overrides: `--key=value` on the command line, or an override file.

Every numbered script declares a flat `@dataclass CFG` and calls `parse_cfg(CFG, stage)`.
Inside a notebook kernel the argument list belongs to the kernel and is ignored, so a
script pasted into a Kaggle cell runs with the values written in its CFG block.

Override file (`--cfg_file=profiles/demo.json`): JSON with sections
`{"all": {...}, "<stage>": {...}}`. Keys of "all" apply to every script whose CFG has the
field (a profile is shared by all stages); keys of the script's own section must exist.
Command-line keys always win over the file and must exist.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A user's configuration mistake: the message says what to change."""


def in_notebook() -> bool:
    """True inside a Jupyter/Kaggle kernel, where sys.argv is the kernel's, not ours."""
    return "ipykernel" in sys.modules or any("ipykernel" in a for a in sys.argv[:1])


def _field_types(cls) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def _parse_json_like(text: str):
    """Value for a field whose default is None or whose type is a list/dict: JSON, else str."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def convert(key: str, value, typ):
    """Convert `value` (str from the command line, or a JSON value) to the field type `typ`."""
    origin = typing.get_origin(typ)
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        if len(args) == 1:
            return convert(key, value, args[0])
        return _parse_json_like(value) if isinstance(value, str) else value
    if typ in (typing.Any, object):  # untyped: JSON from the command line, as from a file
        return _parse_json_like(value) if isinstance(value, str) else value
    try:
        if typ is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if typ is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected an integer")
            return int(value)
        if typ is float:  # int accepted for float
            return float(value)
        if typ is str:
            return str(value)
        if origin in (list, tuple, dict) or typ in (list, tuple, dict):
            parsed = _parse_json_like(value) if isinstance(value, str) else value
            if origin is list or typ is list:
                if isinstance(parsed, str):  # comma list: --folds=0,1
                    parsed = [p for p in parsed.split(",") if p != ""]
                elif not isinstance(parsed, list):  # one value: --folds=0
                    parsed = [parsed]
                inner = typing.get_args(typ)
                return [convert(key, p, inner[0]) if inner else p for p in parsed]
            return parsed
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--{key}={value!r}: {err}; expected {typ}") from None
    return value


def _apply(cfg, key: str, value, types: dict, source: str, strict: bool = True) -> bool:
    if key not in types:
        if not strict:
            return False
        close = difflib.get_close_matches(key, list(types), n=3)
        hint = f" Did you mean {', '.join('--' + c for c in close)}?" if close else ""
        raise ConfigError(f"unknown setting '{key}' ({source}).{hint} "
                          f"Known settings: {', '.join(sorted(types))}")
    setattr(cfg, key, convert(key, value, types[key]))
    return True


def load_override_file(path: str | os.PathLike, stage: str) -> tuple[dict, dict]:
    """Return (shared, own) override dicts of `stage` from a JSON profile file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"override file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"override file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"override file {path}: expected an object with sections")
    return dict(data.get("all", {})), dict(data.get(stage, {}))


def parse_cfg(cls, stage: str, argv: list[str] | None = None, defaults: dict | None = None):
    """Build `cls()`, apply `defaults` (a stage's own defaults), then the override file, then
    the `--key=value` arguments. `argv` defaults to sys.argv[1:], or [] inside a notebook.
    """
    if argv is None:
        argv = [] if in_notebook() else sys.argv[1:]
    cfg = cls()
    types = _field_types(cls)
    for key, value in (defaults or {}).items():
        _apply(cfg, key, value, types, "stage defaults")
    pairs = []
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"argument {arg!r}: write overrides as --key=value")
        key, value = arg[2:].split("=", 1)
        pairs.append((key.replace("-", "_"), value))
    files = [v for k, v in pairs if k == "cfg_file"]
    for path in files:
        shared, own = load_override_file(path, stage)
        for key, value in shared.items():
            _apply(cfg, key, value, types, f"'all' section of {path}", strict=False)
        for key, value in own.items():
            _apply(cfg, key, value, types, f"'{stage}' section of {path}")
    for key, value in pairs:
        if key != "cfg_file":
            _apply(cfg, key, value, types, "command line")
    if hasattr(cfg, "finalize"):
        cfg.finalize()
    return cfg


def cfg_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def run(main, cls, stage: str, defaults: dict | None = None):
    """Script entry point: parse the CFG and call main(cfg); a ConfigError (a user's
    configuration or data mistake) ends the process with its message, not a traceback."""
    try:
        return main(parse_cfg(cls, stage, defaults=defaults))
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
