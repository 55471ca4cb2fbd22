"""Checkpoints verified once, before any job: the SHA-256 of every file (weights, configs,
tokenizer) of every model and judge a study uses, against the hashes recorded beside them. A
flipped bit or a truncated file is refused naming the file and the config key, instead of failing
(or silently training) in every job. A weight file the record does not list is refused too; a
record written before configs were hashed (weights only) still verifies its weights.

Recorded hashes live in the harness manifest (`bench_model.json`, key `sha256`) of the embedded
models and the in-house CLIP, or in `sha256.json` beside a real model's `model_index.json`, written
by `python -m t2i_rl_bench.integrity record <folder>`. A real-model folder without one has nothing to
check. `verify_sha256: false` in the config skips the check (hours of hashing for very large models).

    python -m t2i_rl_bench.integrity record /path/to/stable-diffusion-v1-5   # once, after copying the weights
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from t2i_rl_bench.models.checkpoint import HASHES, MANIFEST, WEIGHT_SUFFIXES, checkpoint_files
from t2i_rl_bench.study import ConfigError

_CHUNK = 1 << 22


class IntegrityError(ConfigError):
    """A weight file differs from its recorded hash; the message names the file and the config key."""


@dataclass(frozen=True)
class Mismatch:
    file: Path
    problem: str  # "changed", "missing", "not recorded"
    expected: str | None = None
    actual: str | None = None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def recorded_hashes(folder: Path) -> tuple[str, dict[str, str]] | None:
    """(the file that records them, {relative path: sha256}) or None when nothing is recorded
    (a real model folder without sha256.json). A harness manifest always records them: one
    without is refused (ValueError), since its checkpoint could not be verified."""
    for name in (MANIFEST, HASHES):
        path = folder / name
        if path.is_file():
            hashes = json.loads(path.read_text()).get("sha256")
            if hashes is not None:
                return name, hashes
    if (folder / MANIFEST).is_file():
        raise ValueError(f"{MANIFEST} records no SHA-256 (key 'sha256')")
    return None


def record(folder: str | Path) -> Path:
    """Write `sha256.json` (the hash of every file the model loads) into a real model's folder."""
    folder = Path(folder)
    hashes = {str(p.relative_to(folder)): sha256_file(p) for p in checkpoint_files(folder)}
    out = folder / HASHES
    out.write_text(json.dumps({"sha256": hashes}, indent=1) + "\n")
    return out


def mismatches(folder: Path, hashes: dict[str, str]) -> list[Mismatch]:
    out = []
    weights = (p for p in checkpoint_files(folder) if p.suffix in WEIGHT_SUFFIXES)
    actual = {str(p.relative_to(folder)): p for p in weights}
    for rel, expected in sorted(hashes.items()):
        path = folder / rel
        if not path.is_file():
            out.append(Mismatch(path, "missing", expected))
            continue
        got = sha256_file(path)
        if got != expected:
            out.append(Mismatch(path, "changed", expected, got))
    out += [Mismatch(p, "not recorded") for rel, p in sorted(actual.items()) if rel not in hashes]
    return out


def study_folders(config: dict) -> list[tuple[str, Path]]:
    """(config key, folder) of every model and judge a validated study config uses."""
    folders = [(f"models.{name}.path", Path(model["path"])) for name, model in config["models"].items()]
    if config["evaluation"].get("clip_model"):
        folders.append(("evaluation.clip_model", Path(config["evaluation"]["clip_model"])))
    return folders


def describe(key: str, record_file: str, m: Mismatch) -> str:
    where = f"config key '{key}': {m.file}"
    if m.problem == "missing":
        return f"{where} is missing (its SHA-256 is recorded in {record_file})"
    if m.problem == "not recorded":
        return f"{where} has no SHA-256 in {record_file}; record the folder again if the file belongs there"
    size = m.file.stat().st_size
    return (
        f"{where} does not match the SHA-256 recorded in {record_file} (expected {m.expected[:16]}..., "
        f"got {m.actual[:16]}...; {size} bytes): the file is damaged or truncated. Restore it "
        "(git checkout, copy it again) or regenerate the model; `verify_sha256: false` skips this check"
    )


def verify_study(config: dict) -> list[str]:
    """Every problem with the study's model files, each naming the file and the config key.
    A folder that does not exist yet (an embedded model its pretrain rule builds) is skipped."""
    if not config.get("verify_sha256", True):
        return []
    problems = []
    for key, folder in study_folders(config):
        try:
            found = recorded_hashes(folder) if folder.is_dir() else None
        except (OSError, ValueError, AttributeError) as exc:
            problems.append(
                f"config key '{key}': the recorded hashes in {folder} cannot be read ({exc}); "
                f"restore the folder's manifest, or record them again (`python -m t2i_rl_bench.integrity "
                "record <folder>`) if the files are known to be good; `verify_sha256: false` skips this check"
            )
            continue
        if found is None:
            continue
        record_file, hashes = found
        problems += [describe(key, record_file, m) for m in mismatches(folder, hashes)]
    return problems


def check_study(config: dict) -> None:
    """Raise IntegrityError (a ConfigError) with every problem found."""
    problems = verify_study(config)
    if problems:
        raise IntegrityError("; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m t2i_rl_bench.integrity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record", help="write sha256.json (the hash of every file) into a model folder")
    p.add_argument("folder")
    p = sub.add_parser("check", help="verify the weight files of every model and judge of a study config")
    p.add_argument("configfile")
    args = parser.parse_args(argv)
    if args.command == "record":
        print(f"wrote {record(args.folder)}")
        return 0
    from t2i_rl_bench import study  # noqa: PLC0415

    problems = verify_study(study.load(args.configfile))
    print("\n".join(problems) or f"{args.configfile}: every recorded weight file matches its SHA-256")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
