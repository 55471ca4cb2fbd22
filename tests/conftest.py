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
