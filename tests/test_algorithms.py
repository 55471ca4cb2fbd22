"""Conformance of the five algorithms to the formulas of docs/algorithms.md (known answers), and the
algorithm registry's handling of plugins."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from t2i_rl_bench.advantages import AdvantageEstimator
from t2i_rl_bench.algorithm import StepBatch
from t2i_rl_bench.algorithms.dancegrpo import DanceGRPO
from t2i_rl_bench.algorithms.ddpo_is import DDPOIS
from t2i_rl_bench.algorithms.flowgrpo import FlowGRPO
from t2i_rl_bench.algorithms.loop import LOOP
from t2i_rl_bench.algorithms.pcpo import PCPO, sigma_tilde
from t2i_rl_bench.algorithms.prdp import PRDP
from t2i_rl_bench.algorithms.reinforce import Reinforce
from t2i_rl_bench.losses import ppo_clip_loss
from t2i_rl_bench.registry import ALGORITHMS, PluginError
from t2i_rl_bench.sampling import DDIMSampler, FlowSDESampler, diffusers_flow_sigmas

torch.set_num_threads(1)


def make_batch(logp, logp_old=None, advantages=None, rewards=None, group_ids=None, logp_ref=None, step_index=None):
    b, s = logp.shape
    return StepBatch(
        logp=logp,
        logp_old=logp.detach().clone() if logp_old is None else logp_old,
        advantages=torch.zeros(b) if advantages is None else advantages,
        rewards=torch.zeros(b) if rewards is None else rewards,
        group_ids=torch.zeros(b, dtype=torch.long) if group_ids is None else group_ids,
        timesteps=torch.zeros(b, s, dtype=torch.long),
        step_index=torch.arange(s).expand(b, s) if step_index is None else step_index,
        logp_ref=logp_ref,
    )


def sd1_sampler(eta: float = 1.0) -> DDIMSampler:
    """SD-1.x scheduler (docs/algorithms.md#conventions-shared-by-every-method), 50 steps."""
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        set_alpha_to_one=False,
        timestep_spacing="leading",
        clip_sample=False,
    )
    return DDIMSampler(scheduler, 50, eta=eta)


def flowgrpo_sampler() -> FlowSDESampler:
    """Flow-GRPO training sampler: SD3 scheduler with shift 3, 10 steps, a = 0.7
    (docs/algorithms.md#the-flow-grpo-sde)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    return FlowSDESampler(scheduler.sigmas.float(), noise_level=0.7, variant="flowgrpo")


# ---- DDPO-IS ----------------------------------------------------------------------------------
def test_ddpo_is_at_ratio_one_has_no_clipping_and_reinforce_gradient():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 5, generator=g, requires_grad=True)
    features = torch.randn(6, 5, generator=g)
    adv = torch.randn(6, generator=g)
    grads = []
    for algo in (DDPOIS(), Reinforce()):
        logp = theta * features  # any differentiable per-step log-prob
        loss = algo.loss(make_batch(logp, advantages=adv))
        (grad,) = torch.autograd.grad(loss.value, theta)
        grads.append(grad)
        if isinstance(algo, DDPOIS):
            assert loss.clipped.sum() == 0 and float(loss.metrics["clipfrac_ratio"]) == 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-9)
    # and the gradient is REINFORCE's -A grad logp / (B S), not zero
    torch.testing.assert_close(grads[1], -adv[:, None] * features / 30)


def test_ddpo_is_clips_ratios_outside_the_range():
    logp_old = torch.zeros(2, 1)
    logp = torch.tensor([[3e-4], [-3e-4]], requires_grad=True)  # rho = 1 +- 3e-4 with eps = 1e-4
    loss = DDPOIS().loss(make_batch(logp, logp_old, advantages=torch.tensor([1.0, -1.0])))
    (grad,) = torch.autograd.grad(loss.value, logp)
    assert loss.clipped.all() and torch.all(grad == 0)


def test_ppo_clip_and_hinge_have_identical_gradients():
    """docs/algorithms.md#the-log-hinge-objective: max(-A rho, -A clip(rho)) and max(0, xi|A| -
    A(rho - 1)) share gradients."""
    xi = 1e-4
    g = torch.Generator().manual_seed(1)
    logr = (torch.rand(64, 8, generator=g) * 6 - 3) * xi
    near = ((logr - math.log1p(xi)).abs() < 2e-6) | ((logr - math.log1p(-xi)).abs() < 2e-6)
    logr[near] = 0.0  # keep away from the kinks
    adv = torch.randn(64, generator=g)
    logp_old = torch.randn(64, 8, generator=g)
    logp = (logp_old + logr).requires_grad_(True)
    (g_ppo,) = torch.autograd.grad(ppo_clip_loss(logp, logp_old, adv, xi).value, logp)
    rho = (logp - logp_old).exp()
    hinge = torch.relu(xi * adv.abs()[:, None] - adv[:, None] * (rho - 1)).mean()
    (g_hinge,) = torch.autograd.grad(hinge, logp)
    torch.testing.assert_close(g_ppo, g_hinge, rtol=1e-6, atol=1e-12)
    assert (g_ppo != 0).float().mean() > 0.3 and (g_ppo == 0).float().mean() > 0.1  # both regimes occur


def test_pcpo_log_hinge_is_the_formula_and_a_ratio_free_ppo_gradient():
    """PCPO (credit 'none'): relu(xi|A| - A log rho); its gradient is PPO's divided by rho."""
    xi = 1e-4
    g = torch.Generator().manual_seed(2)
    logr = (torch.rand(64, 8, generator=g) * 6 - 3) * xi
    band = (logr.abs() - xi).abs() < 2 * xi**2  # log(1 +- xi) vs +-xi: the kinks differ by ~xi^2/2
    logr[band] = 0.0
    adv = torch.randn(64, generator=g)
    logp_old = torch.zeros(64, 8)
    pcpo = PCPO(credit="none")
    pcpo.setup(sd1_sampler())
    logp = (logp_old + logr).requires_grad_(True)
    loss = pcpo.loss(make_batch(logp, logp_old, advantages=adv, step_index=torch.randint(0, 50, (64, 8), generator=g)))
    expected = torch.relu(xi * adv.abs()[:, None] - adv[:, None] * logr).mean()
    torch.testing.assert_close(loss.value, expected)
    (g_pcpo,) = torch.autograd.grad(loss.value, logp)
    (g_ppo,) = torch.autograd.grad(ppo_clip_loss(logp, logp_old, adv, xi).value, logp)
    torch.testing.assert_close(g_pcpo * logr.exp(), g_ppo, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(loss.clipped, g_pcpo.eq(0) & adv[:, None].ne(0))


# ---- advantages -------------------------------------------------------------------------------
def grouped_rewards(k: int = 4, groups: int = 3, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k * groups, generator=g) * 0.5, torch.arange(groups).repeat_interleave(k)


def test_leave_one_out_advantages():
    rewards, groups = grouped_rewards()
    loop = LOOP()
    assert loop.recipe.group_size == 4
    adv = loop.advantages(rewards, groups, ["p"] * len(rewards))
    for i in range(len(rewards)):
        others = [float(rewards[j]) for j in range(len(rewards)) if groups[j] == groups[i] and j != i]
        assert adv[i].item() == pytest.approx(rewards[i].item() - statistics.fmean(others), abs=1e-6)
        members = rewards[groups == groups[i]]
        assert adv[i].item() == pytest.approx(4 / 3 * (rewards[i] - members.mean()).item(), abs=1e-6)
    for gid in range(3):
        assert adv[groups == gid].sum().item() == pytest.approx(0.0, abs=1e-6)
    std = LOOP(advantages="loo_std").advantages(rewards, groups, ["p"] * len(rewards))
    sd = torch.tensor([statistics.stdev(rewards[groups == gid].tolist()) for gid in groups.tolist()])
    torch.testing.assert_close(std, adv / (sd + 1e-8))
    with pytest.raises(ValueError, match="loo"):
        LOOP(advantages="per_prompt")


def test_grpo_uses_the_unbiased_group_std():
    rewards, groups = grouped_rewards(k=4, groups=2)
    adv = DanceGRPO().advantages(rewards, groups, ["p"] * 8)
    for gid in range(2):
        r = rewards[groups == gid].tolist()
        expected = [(x - statistics.fmean(r)) / (statistics.stdev(r) + 1e-8) for x in r]
        assert adv[groups == gid].tolist() == pytest.approx(expected, abs=1e-5)
        biased = [(x - statistics.fmean(r)) / statistics.pstdev(r) for x in r]
        assert adv[groups == gid].tolist() != pytest.approx(biased, abs=1e-3)


def test_flowgrpo_uses_group_mean_and_global_std():
    rewards, groups = grouped_rewards(k=4, groups=3)
    adv = AdvantageEstimator("flowgrpo")(rewards, groups, ["p"] * 12)
    sd = statistics.pstdev(rewards.tolist())
    for i in range(12):
        mean = statistics.fmean(rewards[groups == groups[i]].tolist())
        assert adv[i].item() == pytest.approx((rewards[i].item() - mean) / (sd + 1e-4), abs=1e-5)


def test_dancegrpo_and_ddpo_defaults():
    d, dr = DanceGRPO().settings, DanceGRPO().recipe
    assert (
        dr.advantages,
        dr.same_noise_per_group,
        dr.drop_last_step,
        dr.timestep_fraction,
        d.clip_range,
        dr.updates_per_round,
        dr.adv_clip,
    ) == ("grpo_group", True, True, 1.0, 1e-4, 2, 5.0)
    s, sr = DDPOIS().settings, DDPOIS().recipe
    assert (sr.advantages, s.clip_range, sr.adv_clip, sr.updates_per_round) == ("per_prompt", 1e-4, 5.0, 4)
    assert DanceGRPO.flow_variant == "dancegrpo" and DDPOIS.flow_variant == "flowgrpo"


# ---- PRDP -------------------------------------------------------------------------------------
def test_prdp_loss_vanishes_when_implied_rewards_predict_reward_differences():
    beta = 0.5
    rewards = torch.tensor([0.3, -0.1, 0.7, 0.2])
    ref = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    logp = ref + rewards[:, None] / beta + 0.25  # s_a - s_b = dr / beta for every pair
    prdp = PRDP(beta=beta)
    assert prdp.loss(make_batch(logp, rewards=rewards, logp_ref=ref)).value.item() < 1e-10
    logp[2, 0] += 0.3
    assert prdp.loss(make_batch(logp, rewards=rewards, logp_ref=ref)).value.item() > 1e-3


def test_prdp_loss_is_max_of_plain_and_clipped_regression():
    """One pair, one step, beta 1, eps 0.1, r = (1, 0), logp_ref = logp_old = 0 (hand-computed)."""
    prdp = PRDP(beta=1.0, clip_range=0.1)
    ref = old = torch.zeros(2, 1)
    rewards = torch.tensor([1.0, 0.0])
    for first, expected, grad_zero in [(0.05, 0.9025, False), (0.5, 0.81, True), (3.0, 4.0, False)]:
        # l = (first - 1)^2; l_clip = (clip(first, -0.1, 0.1) - 1)^2
        logp = torch.tensor([[first], [0.0]], requires_grad=True)
        loss = prdp.loss(make_batch(logp, old, rewards=rewards, logp_ref=ref))
        assert loss.value.item() == pytest.approx(expected)
        (grad,) = torch.autograd.grad(loss.value, logp)
        assert bool(grad[0, 0] == 0) == grad_zero  # the clipped branch is flat in the clipped step


def test_prdp_step_reduce_and_pairs():
    ref = torch.zeros(2, 2)
    logp = torch.tensor([[0.5, 0.3], [0.0, 0.0]])
    rewards = torch.tensor([1.0, 0.0])
    mean = PRDP(beta=1.0, clip_range=1.0).loss(make_batch(logp, rewards=rewards, logp_ref=ref))
    total = PRDP(beta=1.0, clip_range=1.0, step_reduce="sum").loss(make_batch(logp, rewards=rewards, logp_ref=ref))
    assert mean.value.item() == pytest.approx((0.4 - 1) ** 2) and total.value.item() == pytest.approx((0.8 - 1) ** 2)
    tied = PRDP().loss(make_batch(logp, rewards=torch.ones(2), logp_ref=ref))  # ties dropped
    other_groups = PRDP().loss(make_batch(logp, rewards=rewards, logp_ref=ref, group_ids=torch.tensor([0, 1])))
    assert tied.value.item() == 0 and other_groups.value.item() == 0


def test_prdp_defaults():
    s = PRDP().settings
    assert (s.beta, s.clip_range, s.step_reduce, PRDP().needs_reference, PRDP().recipe.advantages) == (
        3e-5,
        1e-6,
        "mean",
        True,
        "none",
    )
    assert not PRDP().needs_reference_means
    assert PRDP.whole_trajectory and PRDP.whole_groups


# ---- PCPO weights -----------------------------------------------------------------------------
def test_ddim_native_weights_sd1():
    """docs/algorithms.md#per-step-credit: SD-1.x, DDIM eta 1, 50 steps: w from 0.374 to 3.275, mean 0.517."""
    sampler = sd1_sampler()
    w = sampler.native_weights()
    assert sampler.timesteps[0] == 981 and sampler.timesteps[-1] == 1
    assert w.min().item() == pytest.approx(0.374, abs=1e-3) and w.max().item() == pytest.approx(3.275, abs=1e-3)
    assert w.mean().item() == pytest.approx(0.517, abs=1e-3)
    assert w[-2].item() == pytest.approx(3.27, abs=1e-2) and w[-1].item() == pytest.approx(1.00, abs=1e-2)
    # closed form: at eta = 1, w(t) is its minimum sqrt((1 - alpha_t) / (alpha_t (1 - ab_prev)))
    ab = sampler.alphas_cumprod.double()
    for k, t in enumerate(sampler.timesteps.tolist()):
        ab_prev = ab[t - 20] if t >= 20 else ab[0]
        alpha = ab[t] / ab_prev
        assert w[k].item() == pytest.approx(math.sqrt((1 - alpha) / (alpha * (1 - ab_prev))), rel=1e-4)


def test_flowgrpo_schedule_and_native_weights():
    """docs/algorithms.md#per-step-credit: Flow-GRPO, 10 steps, shift 3, a = 0.7."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    torch.testing.assert_close(diffusers_flow_sigmas(10, 3.0), scheduler.sigmas.float(), rtol=0, atol=1e-6)
    sampler = flowgrpo_sampler()
    t = sampler.sigmas[:-1]
    assert t.tolist() == pytest.approx([1.00, 0.96, 0.91, 0.86, 0.79, 0.71, 0.60, 0.46, 0.28, 0.009], abs=6e-3)
    w = sampler.native_weights()
    listed = [0.0581, 0.078, 0.129, 0.188, 0.264, 0.371, 0.536, 0.825, 1.487, 1.771]
    assert w[1:].tolist() == pytest.approx(listed[1:], abs=1e-3)
    # closed form for t < 1: (1 - t) sigma_t^2 / (2t) = a^2 / 2, so w = sqrt(dt) (1 + a^2/2) / (a sqrt(t/(1-t)))
    dt = sampler.sigmas[:-1] - sampler.sigmas[1:]
    closed = dt.sqrt() * (1 + 0.7**2 / 2) / (0.7 * (t / (1 - t)).sqrt())
    torch.testing.assert_close(w[1:], closed[1:], rtol=1e-5, atol=0)
    # t = 1: Flow-GRPO's std replaces only the denominator's sigma by sigmas[1]
    # (sqrt(sigma / (1 - where(sigma == 1, sigma_max, sigma)))), giving 0.0570; an earlier note's
    # 0.0581 (docs/algorithms.md#per-step-credit) substitutes sigmas[1] in the numerator too.
    first = math.sqrt(dt[0]) / (0.7 * math.sqrt(1 / (1 - t[1].item())))
    assert w[0].item() == pytest.approx(first, rel=1e-5) and w[0].item() == pytest.approx(0.0570, abs=1e-4)
    assert w.sum().item() == pytest.approx(5.71, abs=5e-3)
    target = [0.228, 0.267, 0.318, 0.384, 0.474, 0.600, 0.783, 1.066, 1.535, 0.051]
    assert (w.sum() * dt).tolist() == pytest.approx(target, abs=1.5e-3)


def test_pcpo_multipliers_flatten_the_credit():
    ddim = sd1_sampler()
    pcpo = PCPO()
    pcpo.setup(ddim)
    w = ddim.native_weights()
    credit = pcpo.multipliers * w
    torch.testing.assert_close(credit, torch.full_like(credit, w.mean().item()), rtol=1e-5, atol=0)
    flow = flowgrpo_sampler()
    pcpo.setup(flow)
    dt = flow.sigmas[:-1] - flow.sigmas[1:]
    torch.testing.assert_close(pcpo.multipliers * flow.native_weights(), 5.7054 * dt, rtol=1e-4, atol=0)


def test_pcpo_weights_follow_the_step_index():
    """Pitfall (iv): each trained step gets the weight of its own sampler step, not its position."""
    pcpo = PCPO()
    pcpo.setup(sd1_sampler())
    steps = torch.tensor([[48, 3], [0, 49]])
    logp = torch.zeros(2, 2)
    loss = pcpo.loss(make_batch(logp, logp, advantages=torch.tensor([1.0, -2.0]), step_index=steps))
    # log rho = 0: hinge = xi |A|
    expected = 1e-4 * (torch.tensor([[1.0, 1.0], [2.0, 2.0]]) * pcpo.multipliers[steps]).mean()
    torch.testing.assert_close(loss.value, expected)
    assert pcpo.multipliers[48] < 0.2 < 1 < pcpo.multipliers[3]


def test_pcpo_sigma_route_reshapes_the_ddim_variance():
    plain = sd1_sampler()
    pcpo = PCPO(credit="sigma", w_star=4.5)
    ddim = plain.with_std(pcpo.sampler_noise(plain))  # the algorithm declares, the factory applies
    assert plain.sigma_override is None  # the algorithm writes nothing into the sampler
    pcpo.setup(ddim)
    assert torch.all(pcpo.multipliers == 1)
    torch.testing.assert_close(ddim.native_weights(), torch.full((50,), 4.5), rtol=1e-4, atol=0)
    # docs/algorithms.md#proportionate-credit-on-ddim: at t = 981 sigma goes 0.4545 -> 0.0275 for w* = 4.5
    assert ddim.sigma_override[0].item() == pytest.approx(0.0275, abs=2e-4)
    assert ddim.eta * ddim.variance(ddim.timesteps[:1]).sqrt().item() == pytest.approx(0.4545, abs=2e-4)
    # the step rule samples and scores with sigma tilde
    x, eps = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    step = ddim.step(eps, x, ddim.timesteps[5].expand(2), step_index=torch.full((2,), 5))
    torch.testing.assert_close(step.std, ddim.sigma_override[5].expand(2))
    default = sd1_sampler()
    default = default.with_std(PCPO(credit="sigma").sampler_noise(default))  # default w*: the smallest feasible
    assert PCPO().sampler_noise(default) is None  # credit 'reweight' keeps the sampler's std
    torch.testing.assert_close(default.native_weights(), torch.full((50,), 3.2748), rtol=1e-4, atol=0)
    ab_t, ab_prev = default.alpha_bars(default.timesteps)
    with pytest.raises(ValueError, match="w\\*"):
        sigma_tilde(ab_t, ab_prev, 0.517)
    with pytest.raises(ValueError, match="flow"):
        PCPO(credit="sigma").sampler_noise(flowgrpo_sampler())


def test_pcpo_needs_setup():
    with pytest.raises(RuntimeError, match="setup"):
        PCPO().loss(make_batch(torch.zeros(1, 1)))


# ---- registry -----------------------------------------------------------------------------------
PLUGIN = """
import torch
from t2i_rl_bench.algorithm import Algorithm, Loss
class Mine(Algorithm):
    def loss(self, batch):
        return Loss(batch.logp.mean())
class NoLoss(Algorithm):
    pass
not_an_algorithm = 42
"""


def test_plugin_file_loads(tmp_path):
    path = tmp_path / "my_algo.py"
    path.write_text(PLUGIN)
    cls = ALGORITHMS.get(f"{path}:Mine")
    assert cls.__name__ == "Mine" and cls().loss(make_batch(torch.ones(1, 1))).value.item() == 1.0


@pytest.mark.parametrize(
    "source, attr",
    [("import no_such_module_xyz\n", "Mine"), (PLUGIN, "NoLoss"), (PLUGIN, "not_an_algorithm"), (PLUGIN, "Missing")],
)
def test_broken_plugins_fail_naming_the_plugin(tmp_path, source, attr):
    path = tmp_path / "broken_algo.py"
    path.write_text(source)
    with pytest.raises(PluginError) as err:
        ALGORITHMS.get(f"{path}:{attr}")
    assert "broken_algo.py" in str(err.value) or attr in str(err.value)
    assert attr in str(err.value) or "no_such_module_xyz" in str(err.value)


def test_unknown_algorithm_lists_the_known_ones():
    with pytest.raises(KeyError) as err:
        ALGORITHMS.get("ppo_but_misspelled")
    for name in ("reinforce", "ddpo_is", "loop", "prdp", "dancegrpo", "pcpo"):
        assert name in str(err.value)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("ddpo_is", DDPOIS),
        ("loop", LOOP),
        ("prdp", PRDP),
        ("dancegrpo", DanceGRPO),
        ("pcpo", PCPO),
        ("flowgrpo", FlowGRPO),
    ],
)
def test_entry_points(name, cls):
    assert ALGORITHMS.get(name) is cls


# ---- settings: type and range checked from the dataclass fields ---------------------------------
@pytest.mark.parametrize(
    ("algorithm", "key", "value", "message"),
    [
        ("ddpo_is", "clip_range", -1, "> 0"),
        ("ddpo_is", "clip_range", "abc", "float"),
        ("ddpo_is", "clip_range", True, "float"),
        ("prdp", "step_reduce", "max", "one of"),
        ("pcpo", "credit", "x", "one of"),
        ("loop", "inner_epochs", 0, ">= 1"),
        ("loop", "inner_epochs", 1.5, "int"),
        ("dancegrpo", "timestep_fraction", 1.5, "<= 1"),
        ("dancegrpo", "kl_beta", -0.1, ">= 0"),
        ("reinforce", "advantages", "median", "one of"),
        ("reinforce", "group_size", 0, ">= 1"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_key(algorithm, key, value, message):
    from t2i_rl_bench.algorithm import SettingError

    with pytest.raises(SettingError, match=message) as info:
        ALGORITHMS.get(algorithm)(**{key: value})
    assert info.value.key == key


def test_settings_accept_ints_for_floats_and_none_where_declared():
    assert DDPOIS(clip_range=1).settings.clip_range == 1
    assert LOOP(group_size=None).recipe.group_size is None
    assert PCPO(w_star=None).settings.w_star is None


def test_recipe_and_loss_settings_share_the_config_namespace():
    algo = DanceGRPO(updates_per_round=1, kl_beta=0.5, clip_range=2e-4)
    assert (algo.recipe.updates_per_round, algo.settings.kl_beta, algo.settings.clip_range) == (1, 0.5, 2e-4)
    assert algo.needs_reference and algo.needs_reference_means and not DanceGRPO().needs_reference
    assert DanceGRPO.recipe.updates_per_round == 2  # the class default is untouched
    assert algo.describe()["updates_per_round"] == 1 and algo.describe()["kl_beta"] == 0.5
    with pytest.raises(ValueError, match="unknown setting"):
        DanceGRPO(needs_reference=True)
