"""One output folder per study (bench/layout.py): a preset never writes the default study's files;
and the README's plugin section lists what the code registers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from t2i_rl_bench.advantages import MODES
from t2i_rl_bench.layout import study_paths

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
DEFAULT_OUTPUTS = (
    "results/tables",
    "results/citable.json",
    "results/runs",
    "results/logs",
    "results/benchmarks",
    "report/index.html",
)


def planned(configfile: str) -> str:
    done = subprocess.run(
        [str(SNAKEMAKE), "-n", "-p", "--cores", "1", "--configfile", configfile, "--forceall"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_quick_preset_never_names_the_default_study_outputs():
    plan = planned("config/quick.yaml")
    assert "rule train" in plan and "results/studies/quick/runs/" in plan
    assert "results/studies/quick/tables" in plan and "report/studies/quick/index.html" in plan
    for path in DEFAULT_OUTPUTS:
        assert not re.search(rf"(?<![\w/]){re.escape(path)}", plan), path
    # a train job killed after its last retry still writes its summary (t2i_rl_bench.failures)
    assert re.search(
        r"\|\| \S+ -m t2i_rl_bench\.failures killed --out results/studies/quick/runs/\S+/summary\.json "
        r"--stage train --exit-code \$\? --attempt 1 --retries 0",
        plan,
    )


def test_the_default_study_keeps_the_committed_layout():
    paths = study_paths({"study": "default"})
    assert (paths.runs, paths.tables, paths.citable, paths.report) == (
        "results/runs",
        "results/tables",
        "results/citable.json",
        "report/index.html",
    )
    plan = planned("config/config.yaml")
    assert "results/tables/eval.csv" in plan and "report/index.html" in plan and "results/studies" not in plan


@pytest.mark.parametrize("name", ["quick", "flow", "ddpo-sd15-aesthetic"])
def test_every_other_study_has_folders_of_its_own(name):
    paths = study_paths(name)
    for folder in (paths.runs, paths.tables, paths.citable, paths.logs, paths.benchmarks):
        assert folder.startswith(f"results/studies/{name}/")
    assert paths.report == f"report/studies/{name}/index.html"


def test_the_docs_list_every_advantage_mode_of_the_registry():
    text = (ROOT / "docs" / "usage.md").read_text()  # docs/usage.md#writing-a-method-the-details
    block = re.search(r"<!-- advantage-modes:start -->(.*?)<!-- advantage-modes:end -->", text, re.S).group(1)
    listed = re.findall(r"^\| `(\w+)` \|", block, re.M)
    assert tuple(listed) == MODES
    assert re.search(r"`loo` \| leave-one-out, \*\*not normalised\*\*", block)


def test_the_readme_plugin_section_covers_what_authors_need():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Add an algorithm", 1)[1].split("\n## ", 1)[0]
    from dataclasses import fields

    from t2i_rl_bench.algorithm import Loss

    for field in fields(Loss):
        assert f"`{field.name}`" in section, field.name
    flat_section, flat_text = " ".join(section.split()), " ".join(text.split())  # however the lines wrap
    for needed in ("whole_groups = True", "--configfile", "working directory", "pip install -e", "plugin_provenance"):
        assert needed in flat_section or needed in flat_text, needed
