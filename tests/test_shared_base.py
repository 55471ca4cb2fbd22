"""The base model's evaluation and probe are computed once and shared by the runs whose key
matches; a shared row must be exactly the row the run would have computed itself."""

import pytest

from t2i_rl_bench.evaluate import evaluate_base, evaluate_run
from t2i_rl_bench.probe import probe_base, probe_run
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import train

EVALUATION = {
    "prompts": "heldout",
    "max_prompts": 2,
    "images_per_prompt": 2,
    "seed": 0,
    "rewards": ["jpeg_compressibility", "attribute_match"],
    "clip_model": None,
}
PROBE = {"enabled": True, "minibatches": 2, "seed": 7}


def _cfg(model, **kw) -> RunSpec:
    base = dict(
        model_path=str(model),
        algorithm="ddpo_is",
        reward="jpeg_compressibility",
        seed=3,
        num_steps=3,
        images_per_round=4,
        group_size=2,
        budgets=[4],
        prompts=["a red circle", "a blue square"],
    )
    return RunSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(_cfg(tiny_model), out)
    return out


def test_a_shared_base_evaluation_equals_the_runs_own(tiny_model, run, tmp_path):
    own = evaluate_run(run, _cfg(tiny_model), EVALUATION)
    base = tmp_path / "base_eval.json"
    evaluate_base(_cfg(tiny_model, seed=11, algorithm="pcpo", reward="attribute_match"), EVALUATION, base)
    shared = evaluate_run(run, _cfg(tiny_model), EVALUATION, base=base)
    assert shared["base_shared"] and not own["base_shared"]
    assert shared["rows"] == own["rows"] and len(own["rows"]) == 2
    assert (run / "samples" / "0.png").read_bytes() == base.with_suffix(".png").read_bytes()


def test_a_base_evaluation_with_another_sampler_is_not_used(tiny_model, run, tmp_path):
    base = tmp_path / "base_eval.json"
    evaluate_base(_cfg(tiny_model, guidance=1.0), EVALUATION, base)
    out = evaluate_run(run, _cfg(tiny_model), EVALUATION, base=base)
    assert not out["base_shared"]
    assert out["rows"][0] != evaluate_run(run, _cfg(tiny_model, guidance=1.0), EVALUATION)["rows"][0]


def test_a_shared_base_probe_equals_the_runs_own(tiny_model, run, tmp_path):
    own = probe_run(run, _cfg(tiny_model), PROBE)
    base = tmp_path / "base_probe.json"
    probe_base(_cfg(tiny_model, seed=11, budgets=[8, 16], lr=1.0), PROBE, base)
    shared = probe_run(run, _cfg(tiny_model), PROBE, base=base)
    assert shared["base_shared"] and not own["base_shared"]
    assert shared["rows"] == own["rows"] and [r["budget"] for r in own["rows"]] == [0, 4]
    other_algorithm = tmp_path / "other.json"
    probe_base(_cfg(tiny_model, algorithm="pcpo"), PROBE, other_algorithm)
    assert not probe_run(run, _cfg(tiny_model), PROBE, base=other_algorithm)["base_shared"]


def test_with_lora_the_base_probe_is_per_seed_and_over_the_adapters(tiny_model, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_model, lora_rank=2), out)
    base = tmp_path / "base_probe.json"
    probe_base(_cfg(tiny_model, lora_rank=2, seed=4), PROBE, base)
    own = probe_run(out, _cfg(tiny_model, lora_rank=2), PROBE, base=base)
    assert not own["base_shared"]
    # the adapters start at zero (B = 0): only B has a gradient, so the gradient is that of the
    # adapters, not of the full denoiser, and it depends on the seed that drew A
    assert (
        own["rows"][0]["mean_sq_norm"]
        != probe_run(out, _cfg(tiny_model, lora_rank=2, seed=4), PROBE)["rows"][0]["mean_sq_norm"]
    )
