import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised embedded model folder (2 pretraining steps), shared by tests."""
    from t2i_rl_bench.models.embedded import EmbeddedSpec
    from t2i_rl_bench.world.pretrain import pretrain

    out = tmp_path_factory.mktemp("models") / "tiny"
    spec = EmbeddedSpec(layers=1, heads=2, head_dim=8, text_width=16, text_layers=1)
    return pretrain(out, steps=2, batch_size=4, spec=spec, progress=False)


@pytest.fixture(scope="session")
def tiny_flow_model(tmp_path_factory):
    """The same with the rectified-flow objective, shared by tests."""
    from t2i_rl_bench.models.embedded import EmbeddedSpec
    from t2i_rl_bench.world.pretrain import pretrain

    spec = EmbeddedSpec(layers=1, heads=2, head_dim=8, text_width=16, text_layers=1, objective="flow")
    return pretrain(tmp_path_factory.mktemp("models") / "tiny-flow", steps=2, batch_size=4, spec=spec, progress=False)


@pytest.fixture
def flow_toy(monkeypatch):
    """The analytic toy of tests/test_learning.py on the flow side: the point policy that samples
    with the flow SDEs in place of the model, and the point reward (tests build runs with
    test_learning.toy_spec)."""
    from t2i_rl_bench import factory
    from tests import test_learning as toy
    from tests.test_flowgrpo import FlowPointPolicy

    monkeypatch.setattr(factory, "Policy", FlowPointPolicy)
    toy.REWARDS.register("test_point_target")(toy.point_reward)
