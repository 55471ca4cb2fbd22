"""Atomic file output: a reader (or a rerun after kill -9) never sees a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place (old one removed only after the swap)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def read_shared(path: str | Path | None, key: dict) -> dict | None:
    """A shared result {"key": ..., "row": ...} (the base model's evaluation or probe) when the file
    exists and was made for exactly this key (compared as JSON), else None: compute it yourself."""
    if path is None or not Path(path).is_file():
        return None
    shared = json.loads(Path(path).read_text())
    return shared if shared["key"] == json.loads(json.dumps(key)) else None
