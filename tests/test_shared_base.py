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


def _files(run, names=("eval.json", "probe.json")) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in names}


def test_assess_writes_what_evaluate_and_probe_write_on_their_own(tiny_model, run, tmp_path):
    # the workflow's one job per run (evaluation, then probe, in one process) against the two
    # commands run one at a time: the same files byte for byte
    import json
    import shutil

    from t2i_rl_bench.cli import main as bench_main

    base_eval, base_probe = tmp_path / "base_eval.json", tmp_path / "base_probe.json"
    evaluate_base(_cfg(tiny_model), EVALUATION, base_eval)
    probe_base(_cfg(tiny_model), PROBE, base_probe)
    evaluation, probe = json.dumps(EVALUATION), json.dumps(PROBE)
    alone = tmp_path / "alone"
    shutil.copytree(run, alone)
    for f in ("eval.json", "probe.json"):
        (alone / f).unlink(missing_ok=True)
    assert bench_main(["evaluate", "--run-dir", str(alone), "--evaluation", evaluation, "--base", str(base_eval)]) == 0
    assert bench_main(["probe", "--run-dir", str(alone), "--probe", probe, "--base", str(base_probe)]) == 0
    together = tmp_path / "together"
    shutil.copytree(run, together)
    argv = ["assess", "--run-dir", str(together), "--evaluation", evaluation, "--base-eval", str(base_eval)]
    assert bench_main([*argv, "--probe", probe, "--base-probe", str(base_probe)]) == 0
    assert _files(together) == _files(alone)
    # without --probe (a study with the probe off) only the evaluation is written
    (together / "probe.json").unlink()
    assert bench_main(argv) == 0 and not (together / "probe.json").exists()
    assert _files(together, ("eval.json",)) == _files(alone, ("eval.json",))


def test_a_failing_probe_of_assess_keeps_the_evaluation(tiny_model, run, tmp_path, monkeypatch):
    # a failure in the second stage is recorded in its own file; the first stage's file stays
    import json
    import shutil

    from t2i_rl_bench import probe as probe_module
    from t2i_rl_bench.cli import main as bench_main
    from t2i_rl_bench.reward import RewardError

    work = tmp_path / "run"
    shutil.copytree(run, work)

    def broken(*args, **kwargs):
        raise RewardError("jpeg_compressibility returned NaN for 'a red circle'")

    monkeypatch.setattr(probe_module, "probe_run", broken)
    argv = ["assess", "--run-dir", str(work), "--evaluation", json.dumps(EVALUATION), "--probe", json.dumps(PROBE)]
    assert bench_main(argv) == 0
    assert json.loads((work / "eval.json").read_text())["rows"]
    record = json.loads((work / "probe.json").read_text())
    assert record["status"] == "failed" and record["stage"] == "probe" and "NaN" in record["reason"]


def test_one_probe_base_job_for_several_algorithms_equals_one_job_each(tiny_model, tmp_path):
    import json

    from t2i_rl_bench.cli import main as bench_main

    specs = {a: _cfg(tiny_model, algorithm=a) for a in ("ddpo_is", "pcpo", "loop")}
    argv = ["probe-base", "--probe", json.dumps(PROBE)]
    for name, spec in specs.items():
        argv += ["--run-config", spec.to_json(), "--out", str(tmp_path / f"{name}.json")]
    assert bench_main(argv) == 0
    for name, spec in specs.items():
        alone = tmp_path / f"{name}_alone.json"
        probe_base(spec, PROBE, alone)
        assert (tmp_path / f"{name}.json").read_bytes() == alone.read_bytes(), name
