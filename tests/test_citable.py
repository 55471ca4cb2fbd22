"""results/citable.json against its committed JSON Schema (results/citable.schema.json): a
simulated study's file (written here) and every committed one in the current format."""

import json
from pathlib import Path

import jsonschema
import pytest
from test_report import _config, _simulate

from t2i_rl_bench import tables

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "results" / "citable.schema.json").read_text())


@pytest.fixture(scope="module")
def citable(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("citable")
    cfg = _config(tmp)
    _simulate(cfg, tmp / "runs")
    tables.aggregate(cfg, tmp / "runs", tmp / "results" / "tables")
    return json.loads((tmp / "results" / "citable.json").read_text())


def test_a_studys_citable_json_follows_the_schema_and_is_complete(citable):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(citable, SCHEMA)
    assert citable["format"] == tables.CITABLE_FORMAT == SCHEMA["properties"]["format"]["const"]
    # every field of each method's recipe and loss settings, not only the config's overrides
    import dataclasses

    from t2i_rl_bench.algorithm import Recipe
    from t2i_rl_bench.registry import ALGORITHMS

    for label, method in citable["methods"].items():
        fields = {f.name for f in dataclasses.fields(Recipe)} | {
            f.name for f in dataclasses.fields(ALGORITHMS.get(label).Settings)
        }
        assert set(method["settings"]) == fields, label
    assert citable["versions"]["python"] and citable["versions"]["torchmetrics"] != "absent"
    assert isinstance(citable["weights"]["evaluation.clip_model"], dict)  # the judge's recorded hashes
    # per-seed values of the derived measures too (change, convergence, matched reward)
    keys = citable["per_seed"]
    assert any("/change/reward/" in k for k in keys) and any("/probe/" in k for k in keys)
    assert len(keys["m/jpeg_compressibility/pcpo/128/change/reward/jpeg_compressibility"]) == 5


def test_the_schema_refuses_an_incomplete_file(citable):
    broken = {k: v for k, v in citable.items() if k != "methods"}
    with pytest.raises(jsonschema.ValidationError, match="methods"):
        jsonschema.validate(broken, SCHEMA)


def test_committed_citable_files_follow_the_schema():
    files = [ROOT / "results" / "citable.json", *sorted(ROOT.glob("results/studies/*/citable.json"))]
    current = [f for f in files if json.loads(f.read_text()).get("format") == tables.CITABLE_FORMAT]
    if not current:
        pytest.skip(f"the {len(files)} committed citable.json files predate format 2; the next study run rewrites them")
    for f in current:
        jsonschema.validate(json.loads(f.read_text()), SCHEMA)
