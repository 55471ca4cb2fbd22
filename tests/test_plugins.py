"""The plugin path: the README's example algorithm, as a plain file and as an installed package
with an entry point, runs through the training loop, evaluation and the aggregate step."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from t2i_rl_bench import study
from t2i_rl_bench.evaluate import evaluate_run
from t2i_rl_bench.probe import probe_run
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.tables import aggregate
from t2i_rl_bench.train import train

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    """The plugin guide's example algorithm (docs/plugins.md; the README's where it has one)."""
    for doc in (ROOT / "docs" / "plugins.md", ROOT / "README.md"):
        text = doc.read_text() if doc.is_file() else ""
        block = re.search(
            r"<!-- plugin-example:start -->\s*```python\n(.*?)```\s*<!-- plugin-example:end -->", text, re.S
        )
        if block:
            return block.group(1)
    raise AssertionError("docs/plugins.md lost its plugin example")


def guide_block(marker: str, language: str) -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    block = re.search(rf"<!-- {marker}:start -->\s*```{language}\n(.*?)```\s*<!-- {marker}:end -->", text, re.S)
    assert block, f"docs/plugins.md lost its {marker} block"
    return block.group(1)


def test_the_guides_recipe_table_lists_every_field_with_its_default():
    import dataclasses

    from t2i_rl_bench.algorithm import Recipe

    text = (ROOT / "docs" / "plugins.md").read_text()
    table = text.split("<!-- recipe-fields:start -->")[1].split("<!-- recipe-fields:end -->")[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", table, re.M)
    assert rows == [(f.name, str(f.default)) for f in dataclasses.fields(Recipe)]


def test_the_guides_package_builds_installs_offline_and_is_listed(tmp_path):
    package = tmp_path / "my_package_src"
    (package / "my_package").mkdir(parents=True)
    (package / "my_package" / "__init__.py").write_text("")
    (package / "my_package" / "my_algo.py").write_text(readme_example())
    (package / "pyproject.toml").write_text(guide_block("plugin-package", "toml"))
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    built = subprocess.run([*pip, "--target", str(site), str(package)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    env = {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    listed = subprocess.run([sys.executable, "-m", "t2i_rl_bench", "list"], env=env, capture_output=True, text=True)
    algorithms = listed.stdout.splitlines()[0]
    assert "clipped_reinforce" in algorithms and "FAILS" not in algorithms, listed.stdout + listed.stderr


def small_study(model: Path, algorithms: dict) -> dict:
    return study.validate(
        {
            "study": "plugin-test",
            "seeds": [0],
            "models": {"tiny": {"path": str(model)}},
            "rewards": ["jpeg_compressibility"],
            "algorithms": algorithms,
            "sampling": {"num_steps": 3},
            "train": {"images_per_round": 4, "group_size": 2, "budgets": [4]},
            "evaluation": {
                "max_prompts": 2,
                "images_per_prompt": 2,
                "rewards": ["jpeg_compressibility"],
                "clip_model": None,
            },
            "probe": {"minibatches": 2},
            "statistics": {"bootstrap_resamples": 100},
        }
    )


def run_study(cfg: dict, runs_root: Path) -> pd.DataFrame:
    for key in study.runs(cfg):
        out = runs_root / key.path
        train(study.run_spec(cfg, key), out)
        run_cfg = RunSpec.read(out)
        evaluate_run(out, run_cfg, cfg["evaluation"])
        probe_run(out, run_cfg, cfg["probe"])
    return aggregate(cfg, runs_root, runs_root.parent / "tables")


def test_readme_plugin_as_a_file_reaches_the_table(tiny_model, tmp_path):
    plugin = tmp_path / "my_algo.py"
    plugin.write_text(readme_example())
    cfg = small_study(
        tiny_model, {"clipped_reinforce": {"plugin": f"{plugin}:ClippedReinforce", "max_log_ratio": 2e-3}}
    )
    table = run_study(cfg, tmp_path / "runs")
    assert set(table["algorithm"]) - {"(all)"} == {"clipped_reinforce"}  # "(all)": the matched reward level
    written = pd.read_csv(tmp_path / "tables" / "eval.csv", comment="#")
    assert set(written["algorithm"]) == {"clipped_reinforce"} and sorted(written["budget"].unique()) == [0, 4]
    probes = pd.read_csv(tmp_path / "tables" / "probe.csv", comment="#")
    assert set(probes["algorithm"]) == {"clipped_reinforce"}


def test_readme_plugin_as_an_installed_package_with_an_entry_point(tiny_model, tmp_path):
    site = tmp_path / "site"
    (site / "my_package").mkdir(parents=True)
    (site / "my_package" / "__init__.py").write_text("")
    (site / "my_package" / "my_algo.py").write_text(readme_example())
    dist = site / "my_package-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[t2i_rl_bench.algorithms]\nclipped_reinforce = my_package.my_algo:ClippedReinforce\n"
    )
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT / "tests")!r})
        from pathlib import Path
        from test_plugins import small_study, run_study
        cfg = small_study(Path({str(tiny_model)!r}), {{"clipped_reinforce": {{}}}})
        table = run_study(cfg, Path({str(tmp_path / "runs")!r}))
        print(sorted(set(table["algorithm"]) - {{"(all)"}}))
    """)
    env = {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    listed = subprocess.run([sys.executable, "-m", "t2i_rl_bench", "list"], env=env, capture_output=True, text=True)
    assert "clipped_reinforce" in listed.stdout.splitlines()[0], listed.stderr
    ran = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "['clipped_reinforce']" in ran.stdout


@pytest.mark.parametrize(
    "source, message",
    [
        ("import no_such_module\n", "failed to import"),
        ("from t2i_rl_bench.algorithm import Algorithm\nclass Broken(Algorithm):\n    pass\n", "does not define loss"),
        ("Broken = 42\n", "not a subclass"),
    ],
)
def test_a_broken_plugin_is_refused_at_validation_naming_it(tiny_model, tmp_path, source, message):
    plugin = tmp_path / "broken.py"
    plugin.write_text(source)
    with pytest.raises(study.ConfigError, match=rf"algorithms\.mine.*broken\.py:Broken.*{message}"):
        small_study(tiny_model, {"mine": {"plugin": f"{plugin}:Broken"}})


def test_a_loss_of_the_wrong_type_fails_naming_the_plugin(tiny_model, tmp_path):
    plugin = tmp_path / "wrong.py"
    plugin.write_text(
        "from t2i_rl_bench.algorithm import Algorithm\n"
        "class Wrong(Algorithm):\n    def loss(self, batch):\n        return 0.0\n"
    )
    cfg = small_study(tiny_model, {"wrong": {"plugin": f"{plugin}:Wrong"}})
    from t2i_rl_bench.registry import PluginError

    with pytest.raises(PluginError, match=r"wrong\.py:Wrong.*returned float"):
        run_study(cfg, tmp_path / "runs")
