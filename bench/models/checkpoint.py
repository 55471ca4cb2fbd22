"""Model folders: a manifest (`bench_model.json`) beside the diffusers/transformers subfolders,
with the SHA-256 of every weight file so a shipped checkpoint can be verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "bench_model.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def file_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def write_manifest(folder: Path, info: dict) -> None:
    folder = Path(folder)
    info = dict(info, sha256=file_hashes(folder))
    (folder / MANIFEST).write_text(json.dumps(info, indent=1) + "\n")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: not a model folder of this harness")
    return json.loads(path.read_text())


def verify(folder: str | Path) -> list[str]:
    """Weight files whose hash differs from the manifest (empty when the folder is intact)."""
    recorded = read_manifest(folder).get("sha256", {})
    actual = file_hashes(Path(folder))
    return sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))
