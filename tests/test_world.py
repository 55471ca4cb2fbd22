import numpy as np
import pytest

from t2i_rl_bench.world.captions import HELDOUT_PAIRS, caption, parse, prompt_sets
from t2i_rl_bench.world.checker import accuracy, read
from t2i_rl_bench.world.scenes import ATTRIBUTES, all_scenes, render, sample_jitter


def test_checker_reads_clean_scenes_at_least_99_percent():
    rng = np.random.default_rng(123)
    scenes = all_scenes()
    picks = [scenes[i] for i in rng.integers(len(scenes), size=300)]
    images = np.stack([render(s, jitter=sample_jitter(rng)) for s in picks])
    acc = accuracy(images, [caption(s) for s in picks])
    assert acc["all"] >= 0.99, acc


def test_checker_notices_a_wrong_attribute():
    scene = all_scenes()[0]
    other = type(scene)(**{**scene.as_dict(), "colour": "blue" if scene.colour != "blue" else "red"})
    reading = read(render(other))
    assert reading.colour == other.colour != scene.colour
    assert accuracy(render(other)[None], [caption(scene)])["colour"] == 0.0


def test_blank_image_reads_no_object():
    reading = read(np.zeros((3, 16, 16), dtype=np.float32))
    assert reading.count is None and reading.shape is None and reading.background == "black"


def test_caption_grammar_round_trips_and_omits():
    for scene in all_scenes()[::7]:
        assert parse(caption(scene)) == scene.as_dict()
        named = parse(caption(scene, omit=("size", "background")))
        assert set(named) == set(ATTRIBUTES) - {"size", "background"}
    with pytest.raises(ValueError, match="names no shape"):
        parse("a red thing")


def test_prompt_sets_hold_out_unseen_colour_shape_pairs():
    sets = prompt_sets()
    assert not set(sets["train"]) & set(sets["heldout"])
    for prompt in sets["heldout"]:
        a = parse(prompt)
        assert (a["colour"], a["shape"]) in HELDOUT_PAIRS
    for prompt in sets["train"]:
        a = parse(prompt)
        assert (a["colour"], a["shape"]) not in HELDOUT_PAIRS
    assert len(sets["train"]) + len(sets["heldout"]) == len(all_scenes())
