"""Audio files in any folder tree, found by the names a table gives them.

A table names a file by a path relative to INPUT_DIR or to the table, an absolute path, a
file name, or (Raven tables named after their recording) a stem. Recording ids are file
stems; where two files share a stem, the path below INPUT_DIR ('/' -> '__') tells them apart.
"""
from __future__ import annotations

from pathlib import Path

from common.audio import AUDIO_EXTENSIONS


def audio_files(root) -> list[Path]:
    """Every WAV/FLAC/OGG/MP3 file below `root` (hidden folders skipped), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
                  and p.is_file() and not any(part.startswith(".") for part in
                                              p.relative_to(root).parts))


class AudioIndex:
    """Lookup of the audio files under `root` by relative path, file name and stem."""

    def __init__(self, root):
        self.root = Path(root)
        self.paths = audio_files(self.root)
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for path in self.paths:
            self.by_name.setdefault(path.name.lower(), []).append(path)
            self.by_stem.setdefault(path.stem.lower(), []).append(path)

    def resolve(self, name, table_dir=None) -> tuple[Path | None, str]:
        """(path, "") of the file `name` stands for, or (None, why not)."""
        text = str(name).strip().replace("\\", "/")
        if not text or text.lower() == "nan":
            return None, "the file cell is empty"
        for base in (None, self.root, table_dir):
            candidate = Path(text) if base is None else Path(base) / text
            if (base is not None or candidate.is_absolute()) and candidate.is_file():
                return candidate, ""
        key = Path(text).name.lower()
        for table in (self.by_name, self.by_stem):
            found = table.get(key, [])
            if len(found) == 1:
                return found[0], ""
            if len(found) > 1:
                return None, (f"{len(found)} audio files match {text!r} ({found[0]}, {found[1]}, "
                              "...); name it by its path below input_dir")
        return None, f"no audio file {text!r} under {self.root}"


def recording_ids(paths, root) -> dict:
    """{path: recording_id}: the stem, or the path below `root` where stems collide."""
    paths = sorted({Path(p) for p in paths})
    stems: dict[str, int] = {}
    for path in paths:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    out = {}
    for path in paths:
        if stems[path.stem] == 1:
            out[path] = path.stem
            continue
        try:
            rel = path.relative_to(root).with_suffix("")
        except ValueError:  # outside INPUT_DIR: the parent folder's name tells them apart
            rel = Path(path.parent.name) / path.stem
        out[path] = "__".join(rel.parts)
    return out
