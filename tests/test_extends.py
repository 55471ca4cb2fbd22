"""`extends:` in a study config (bench/study.py `resolve_extends`, docs/usage.md#presets-that-extend-another):
the extended config with the preset's top-level sections in place of its own, each section
replaced whole; refused, naming the file, for a cycle, a missing file or a preset that would
write into the extended study's folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from t2i_rl_bench import study

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory holding the quick preset as config/base.yaml (paths resolve from here)."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "quick.yaml", tmp_path / "config" / "base.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_section_the_preset_gives_replaces_the_extended_ones_whole(workdir):
    base = study.read_yaml("config/base.yaml")
    first = next(iter(base["algorithms"]))
    assert len(base["algorithms"]) > 1
    child = {"extends": "config/base.yaml", "study": "child", "seeds": [7], "algorithms": {first: {"lr": 5e-5}}}
    resolved = study.resolve_extends(child)
    assert "extends" not in resolved and resolved["study"] == "child" and resolved["seeds"] == [7]
    assert resolved["algorithms"] == {first: {"lr": 5e-5}}  # replaced, not merged with the base's other arms
    for key in base:
        if key not in child:
            assert resolved[key] == base[key], key


def test_an_extension_and_the_same_preset_written_out_have_one_hash(workdir):
    written_out = {**study.read_yaml("config/base.yaml"), "study": "child", "seeds": [3, 4]}
    write(workdir / "config" / "full.yaml", written_out)
    write(workdir / "config" / "child.yaml", {"extends": "config/base.yaml", "study": "child", "seeds": [3, 4]})
    a = study.load("config/full.yaml", check_paths=False)
    b = study.load("config/child.yaml", check_paths=False)
    assert a == b and study.config_hash(a) == study.config_hash(b)
    # validate, which the Snakefile calls on what Snakemake read, resolves it the same way
    assert study.validate(study.read_yaml("config/child.yaml"), check_paths=False) == a


def test_a_chain_is_followed(workdir):
    write(workdir / "config" / "middle.yaml", {"extends": "config/base.yaml", "study": "middle", "seeds": [5]})
    write(workdir / "config" / "top.yaml", {"extends": "config/middle.yaml", "study": "top"})
    top = study.load("config/top.yaml", check_paths=False)
    assert top["study"] == "top" and top["seeds"] == [5]


def test_a_cycle_is_refused_naming_the_files(workdir):
    write(workdir / "config" / "a.yaml", {"extends": "config/b.yaml", "study": "a"})
    write(workdir / "config" / "b.yaml", {"extends": "config/a.yaml", "study": "b"})
    with pytest.raises(study.ConfigError, match=r"config/a\.yaml -> config/b\.yaml -> config/a\.yaml is a cycle"):
        study.load("config/a.yaml", check_paths=False)


def test_a_missing_file_is_refused_naming_it_and_the_key(workdir):
    write(workdir / "config" / "child.yaml", {"extends": "config/nowhere.yaml", "study": "child"})
    with pytest.raises(
        study.ConfigError, match=r"config/child\.yaml: config key 'extends': config/nowhere\.yaml is not a file"
    ):
        study.load("config/child.yaml", check_paths=False)


@pytest.mark.parametrize("own", [{}, {"study": "quick"}])
def test_a_preset_must_name_a_study_of_its_own(workdir, own):
    name = study.read_yaml("config/base.yaml").get("study", "default")
    assert name == "quick"
    with pytest.raises(study.ConfigError, match=r"config key 'study': a config that extends config/base\.yaml"):
        study.resolve_extends({"extends": "config/base.yaml", "seeds": [1], **own})


def test_extends_must_be_a_path():
    with pytest.raises(study.ConfigError, match=r"config key 'extends': a config file's path"):
        study.resolve_extends({"extends": ["config/quick.yaml"], "study": "x"})
