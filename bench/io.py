"""Atomic file output: a reader (or a rerun after kill -9) never sees a half-written file; and
strict JSON: every JSON file the harness writes goes through `dumps_json`, which writes a
non-finite number (NaN, inf) as null and lists where it did under the key `non_finite`, so every
file parses with any JSON reader (Python's `json` would otherwise write the invalid `NaN`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """`text` into `path`, swapped in whole. A process whose workflow job has ended (an orphan)
    is stopped here instead of writing (bench/jobguard.py)."""
    from t2i_rl_bench import jobguard

    jobguard.check()
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


NON_FINITE = "non_finite"  # JSON pointers (RFC 6901) of the numbers written as null because not finite


def _pointer(parts: list) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def to_strict(obj, where: tuple = (), found: list[str] | None = None):
    """A copy of `obj` with plain JSON types only: non-finite floats become None (their JSON
    pointers appended to `found`), numpy / torch scalars and arrays become numbers and lists,
    tuples lists, anything else its str()."""
    found = [] if found is None else found
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        found.append(_pointer(list(where)))
        return None
    if isinstance(obj, dict):
        return {str(k): to_strict(v, (*where, k), found) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_strict(v, (*where, i), found) for i, v in enumerate(obj)]
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return to_strict(obj.tolist(), where, found)
    return str(obj)


def dumps_json(obj, indent: int | None = 1) -> str:
    """Strict JSON text of `obj` (see the module doc); a dict gets `non_finite: [pointers]` when any
    number was not finite, so a reader can tell a missing value from a diverged one."""
    found: list[str] = []
    clean = to_strict(obj, found=found)
    if found and isinstance(clean, dict):
        clean[NON_FINITE] = sorted(set(clean.get(NON_FINITE) or []) | set(found))
    return json.dumps(clean, indent=indent, allow_nan=False)


def read_json(path: str | Path):
    """A JSON file the harness wrote, with NaN back where `non_finite` says a number was not
    finite (the tables count such a value as an undefined seed, as before it was written)."""
    obj = json.loads(Path(path).read_text())
    for pointer in obj.get(NON_FINITE, []) if isinstance(obj, dict) else []:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        target = obj
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        if isinstance(target, list):
            target[int(last)] = float("nan")
        else:
            target[last] = float("nan")
    return obj


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, dumps_json(obj) + "\n")


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
    # a failed base job's file has no key (t2i_rl_bench.failures): every run computes its own base
    return shared if shared.get("key") == json.loads(dumps_json(key)) else None
