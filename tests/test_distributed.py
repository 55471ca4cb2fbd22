"""One run across processes (t2i_rl_bench.distributed; gloo on CPU, 2 processes spawned here): N processes
x k micro-batches give the same update as 1 process x N k micro-batches on the same round (the
average is over the global batch, ddpo-pytorch#10), with the same advantages; a real distributed
run samples different noise per process, keeps the processes' weights equal, writes once, and a
killed one resumes to the weights and log of an uninterrupted one."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from t2i_rl_bench.distributed import World
from t2i_rl_bench.rollout import Trajectory, rollout
from t2i_rl_bench.spec import RunSpec
from t2i_rl_bench.train import Trainer

WORLD = 2
PROMPTS = ["a red circle on the left", "a blue square", "two green triangles", "a small red square on the top"]


def _cfg(model: str, algorithm: str, **over) -> RunSpec:
    base = dict(
        model_path=model,
        algorithm=algorithm,
        reward="jpeg_compressibility",
        prompts=PROMPTS,
        num_steps=3,
        images_per_round=8,
        group_size=2,
        micro_batch=2,
        budgets=[8, 16],
        lr=1e-2,
        # Adam's eps at 1: a step linear in the gradient, so float-rounding differences of
        # near-zero gradient entries are not blown up to +-lr by the normalisation
        adam_eps=1.0,
        reuse_sampling_graph=False,
        algorithm_settings={"tracker_min_count": 2} if algorithm != "prdp" else {},
    )
    return RunSpec(**{**base, **over})


def _fixed_round(trainer: Trainer, world: World) -> Trajectory:
    """The same global round in every process (fixed prompts and noise), cut to this process's share."""
    group = trainer.group_size
    n_groups = trainer.spec.images_per_round // group
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n_groups) for _ in range(group)]
    group_ids = torch.arange(n_groups).repeat_interleave(group)
    full = rollout(
        trainer.policy,
        trainer.sampler,
        prompts,
        trainer.spec.guidance,
        torch.Generator().manual_seed(7),
        group_ids,
        trainer.recipe.same_noise_per_group,
    )
    share = world.share(n_groups)
    rows = torch.arange(len(prompts)).view(n_groups, group)[share].flatten()
    return Trajectory(
        prompts=[prompts[i] for i in rows],
        group_ids=group_ids[rows],
        latents=full.latents[rows],
        means=full.means[rows],
        stds=full.stds[rows],
        logp=full.logp[rows],
        timesteps=full.timesteps,
        cond=full.cond[rows],
        uncond=full.uncond[rows],
    )


def _one_round(model: str, algorithm: str, out: Path) -> tuple[dict, torch.Tensor]:
    trainer = Trainer(_cfg(model, algorithm), out)
    world = World.current()
    fixed = _fixed_round(trainer, world)
    trainer.sample_round = lambda: fixed
    line = trainer.round()
    return line, torch.cat([p.detach().flatten() for p in trainer.params])


def _worker(rank: int, port: int, job: str, model: str, algorithm: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        if job == "round":
            line, params = _one_round(model, algorithm, Path(out) / "unused")
        else:
            trainer = Trainer(_cfg(model, algorithm), Path(out) / "run")
            if job == "crash":  # killed during the second round, after the first round's state
                first = trainer.round
                calls = []
                trainer.round = lambda: first() if not calls.append(1) and len(calls) == 1 else 1 / 0
                with pytest.raises(ZeroDivisionError):
                    trainer.run()
                return
            line = trainer.run()
            params = torch.cat([p.detach().flatten() for p in trainer.params])
            line["first_noise"] = trainer.sample_round().latents[:, 0].flatten()[:8].tolist()
        torch.save({"line": line, "params": params}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(job: str, model, algorithm: str, out: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(port, job, str(model), algorithm, str(out)), nprocs=WORLD, join=True)
    files = [out / f"rank{r}.pt" for r in range(WORLD)]
    return [torch.load(f, weights_only=False) for f in files if f.is_file()]


@pytest.mark.parametrize("algorithm", ["ddpo_is", "dancegrpo", "prdp"])
def test_processes_times_micro_batches_equal_one_process(tiny_model, tmp_path, algorithm):
    """2 processes x 2 micro-batches of 2 = 1 process x 4 micro-batches of 2: same advantages,
    same loss normalisation, parameters after the round's optimiser steps equal to 1e-6."""
    single_line, single = _one_round(str(tiny_model), algorithm, tmp_path / "single")
    ranks = _spawn("round", tiny_model, algorithm, tmp_path)
    for r in ranks:
        assert torch.allclose(r["params"], single, atol=1e-6, rtol=0), (r["params"] - single).abs().max()
        for key in ("reward_mean", "reward_std", "adv_abs_mean", "zero_spread_groups", "optimiser_steps"):
            assert r["line"][key] == pytest.approx(single_line[key], abs=1e-7), key
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    base = torch.cat([p.detach().flatten() for p in Trainer(_cfg(str(tiny_model), algorithm), tmp_path).params])
    assert not torch.allclose(single, base)  # the round did move the weights


def test_distributed_run_writes_once_and_keeps_processes_in_step(tiny_model, tmp_path):
    ranks = _spawn("run", tiny_model, "ddpo_is", tmp_path)
    assert all(r["line"]["status"] == "finished" for r in ranks)
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    assert ranks[0]["line"]["first_noise"] != ranks[1]["line"]["first_noise"]  # noise seeded per process
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [x["images_seen"] for x in log] == [8, 16]  # the global count, one line per round
    assert (tmp_path / "run" / "checkpoints" / "16" / "state.json").is_file()
    assert (tmp_path / "run" / "state" / "trainer.pt").is_file()
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 1  # process 0's curves alone


def test_a_lone_process_is_the_identity():
    world = World()
    t = torch.arange(6)
    assert world.gather(t) is t and world.gather_list(["a"]) == ["a"] and world.share(3) == slice(0, 3)
    assert torch.equal(world.own(torch.tensor([4, 1, 5]), 6), torch.tensor([4, 1, 5]))
    g = torch.Generator()
    assert world.sample_generator(0, 0, g) is g
    with pytest.raises(ValueError, match="multiple of the process count"):
        World(0, 2).share(3)


def test_a_killed_distributed_run_resumes_to_the_same_weights(tiny_model, tmp_path):
    whole = _spawn("run", tiny_model, "dancegrpo", tmp_path / "whole")
    _spawn_crash = _spawn("crash", tiny_model, "dancegrpo", tmp_path / "resumed")
    assert _spawn_crash == [] and len((tmp_path / "resumed" / "run" / "log.jsonl").read_text().splitlines()) == 1
    resumed = _spawn("run", tiny_model, "dancegrpo", tmp_path / "resumed")
    for a, b in zip(whole, resumed, strict=True):
        assert torch.equal(a["params"], b["params"])
    logs = [(tmp_path / d / "run" / "log.jsonl").read_text().splitlines() for d in ("whole", "resumed")]
    timing = ("seconds", "peak_memory")
    strip = lambda line: {k: v for k, v in json.loads(line).items() if not k.startswith(timing)}  # noqa: E731
    assert [strip(x) for x in logs[0]] == [strip(x) for x in logs[1]]
