"""The distribution installs one import package, t2i_rl_bench, from the folders bench/,
algorithms/ and rewards/ (pyproject.toml maps them): every package folder is listed, nothing
imports the folders by their own names, and importing them so from the repository root fails."""

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import t2i_rl_bench

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"bench": "t2i_rl_bench", "algorithms": "t2i_rl_bench.algorithms", "rewards": "t2i_rl_bench.rewards"}
FOLDERS_BY_NAME = {name: folder for folder, name in FOLDERS.items()}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_folders() -> dict[str, Path]:
    """Every package under the three folders by its installed name."""
    out = {}
    for folder, name in FOLDERS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder).parts
            out[".".join((name, *rel))] = init.parent
    return out


def test_every_package_folder_is_listed_under_its_mapped_name():
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == FOLDERS_BY_NAME
    # a folder missing from the list would be absent from a wheel (the editable install still finds it)
    assert sorted(tool["packages"]) == sorted(_package_folders())


def test_entry_points_and_console_script_name_the_one_package():
    project = _pyproject()["project"]
    assert project["scripts"] == {"t2i-rl-bench": "t2i_rl_bench.cli:main"}
    groups = project["entry-points"]
    assert set(groups) == {"t2i_rl_bench.algorithms", "t2i_rl_bench.rewards"}
    for group, entries in groups.items():
        for name, value in entries.items():
            assert value.startswith(f"{group}."), (group, name, value)


def test_installed_entry_points_load_from_the_installed_package():
    eps = metadata.entry_points(group="t2i_rl_bench.algorithms")
    assert {"reinforce", "ddpo_is", "pcpo", "flowgrpo"} <= {ep.name for ep in eps}
    cls = next(ep for ep in eps if ep.name == "pcpo").load()
    assert cls.__module__ == "t2i_rl_bench.algorithms.pcpo"
    assert not metadata.entry_points(group="bench.algorithms")  # the old group is gone


def test_no_source_imports_the_folders_by_their_own_names():
    files = [
        f for f in ROOT.glob("*/**/*.py") if not f.relative_to(ROOT).parts[0].startswith((".", "results", "build"))
    ]
    old = set(FOLDERS)
    # the Snakefile is not Python syntax: its import lines by pattern
    snakefile = (ROOT / "Snakefile").read_text().splitlines()
    found = [
        f"Snakefile:{i} {line}"
        for i, line in enumerate(snakefile, 1)
        if re.match(r"\s*(from|import)\s+(bench|algorithms|rewards)\b", line)
    ]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in old]
    assert not found


def test_the_folders_refuse_to_import_by_their_own_names_from_the_repository_root():
    for folder, name in FOLDERS.items():
        done = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode != 0
        assert f"ImportError: {folder}/ is" in done.stderr and name in done.stderr


def test_python_dash_m_runs_the_package_from_anywhere(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "t2i_rl_bench", "list"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("algorithms: ") and "pcpo" in done.stdout
    assert Path(t2i_rl_bench.__file__).name == "__init__.py"
