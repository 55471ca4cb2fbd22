"""Model folders: a manifest (`bench_model.json`) beside the diffusers/transformers subfolders,
with the SHA-256 of every file of the folder (weights, configs, tokenizer) so a shipped checkpoint
can be verified; or a diffusers pipeline folder (`model_index.json`) of a real model.
`model_family` tells which family a folder is."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "bench_model.json"
HASHES = "sha256.json"  # recorded hashes of a folder that has no harness manifest (a diffusers pipeline)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def checkpoint_files(folder: Path) -> list[Path]:
    """Every file a model is loaded from: the folder's files but the records of their hashes and
    hidden or cache entries (`.cache/`, `.gitattributes`, `__pycache__/`)."""
    files = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if not path.is_file() or any(p.startswith(".") or p == "__pycache__" for p in parts):
            continue
        if len(parts) == 1 and parts[0] in (MANIFEST, HASHES):
            continue
        files.append(path)
    return files


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in checkpoint_files(folder)}


def write_manifest(folder: Path, info: dict) -> None:
    folder = Path(folder)
    info = dict(info, sha256=file_hashes(folder))
    from t2i_rl_bench.io import dumps_json

    (folder / MANIFEST).write_text(dumps_json(info) + "\n")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: not a model folder of this harness")
    return json.loads(path.read_text())


def verify(folder: str | Path) -> list[str]:
    """Files whose hash differs from the manifest (empty when the folder is intact)."""
    recorded = read_manifest(folder).get("sha256", {})
    actual = file_hashes(Path(folder))
    return sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))


PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusion3Pipeline": "flow"}
MODEL_INDEX = "model_index.json"


def model_family(folder: str | Path, config_key: str = "model.path") -> str:
    """The family of a model folder; errors name the folder and the config key."""
    folder = Path(folder)
    where = f"model folder {folder} (config key '{config_key}')"
    if not folder.is_dir():
        raise FileNotFoundError(f"{where} does not exist; point the key at a local model folder")
    if (folder / MANIFEST).is_file():
        return read_manifest(folder).get("family", "embedded")
    if (folder / MODEL_INDEX).is_file():
        pipeline = json.loads((folder / MODEL_INDEX).read_text()).get("_class_name")
        if pipeline not in PIPELINE_FAMILIES:
            raise ValueError(
                f"{where} holds a diffusers {pipeline!r}; supported pipelines: "
                + ", ".join(f"{k} (family {v})" for k, v in PIPELINE_FAMILIES.items())
            )
        return PIPELINE_FAMILIES[pipeline]
    raise FileNotFoundError(
        f"{where} has neither {MANIFEST} (embedded model; regenerate it with `python -m t2i_rl_bench pretrain`) "
        f"nor {MODEL_INDEX} (diffusers pipeline folder)"
    )
