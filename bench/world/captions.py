"""The caption grammar of the embedded world, its inverse, and the prompt sets.

    caption := count [size] [colour] shape ["on the" position] ["," background "background"]
    e.g.      "two small red circles on the left , black background"

Counts and shapes are always named; the other attributes may be left out (pretraining captions
drop some at random so the model also learns the marginals). `parse` inverts the grammar, so a
reward or a checker can read the attributes a prompt names from the prompt text alone.
"""

from __future__ import annotations

import numpy as np

from t2i_rl_bench.world.scenes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, all_scenes

OPTIONAL = ("size", "colour", "position", "background")
# (colour, shape) pairs never used in training prompts: the held-out set is made of them.
HELDOUT_PAIRS = (("red", "triangle"), ("green", "square"), ("blue", "circle"))


def caption(scene: Scene, omit: tuple[str, ...] = ()) -> str:
    bad = set(omit) - set(OPTIONAL)
    if bad:
        raise ValueError(f"cannot omit {sorted(bad)}; optional attributes are {OPTIONAL}")
    words = ["a" if scene.count == "one" else "two"]
    if "size" not in omit:
        words.append(scene.size)
    if "colour" not in omit:
        words.append(scene.colour)
    words.append(scene.shape + ("s" if scene.count == "two" else ""))
    if "position" not in omit:
        words += ["on", "the", scene.position]
    if "background" not in omit:
        words += [",", scene.background, "background"]
    return " ".join(words)


def parse(text: str) -> dict[str, str]:
    """Attributes named by a caption of this grammar: {'count': 'two', 'colour': 'red', ...}.

    Raises ValueError naming the caption when it does not follow the grammar."""
    words = text.replace(",", " , ").split()
    named: dict[str, str] = {}
    for i, word in enumerate(words):
        if word in ("a", "one"):
            named["count"] = "one"
        elif word == "two":
            named["count"] = "two"
        elif word in SIZES:
            named["size"] = word
        elif word in COLOURS:
            named["colour"] = word
        elif word.rstrip("s") in SHAPES:
            named["shape"] = word.rstrip("s")
        elif word in POSITIONS and i > 0 and words[i - 1] == "the":
            named["position"] = word
        elif word in BACKGROUNDS and i + 1 < len(words) and words[i + 1] == "background":
            named["background"] = word
    if "shape" not in named:
        raise ValueError(f"caption {text!r} names no shape; it does not follow the world's grammar")
    return named


def vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order."""
    words = ["a", "two", "on", "the", ",", "background"]
    words += list(SIZES) + list(COLOURS) + list(POSITIONS) + list(BACKGROUNDS)
    words += [s for shape in SHAPES for s in (shape, shape + "s")]
    return words


def random_omissions(rng: np.random.Generator, p_full: float = 0.6, p_drop: float = 0.3):
    """Which optional attributes a pretraining caption leaves out."""
    if rng.random() < p_full:
        return ()
    return tuple(a for a in OPTIONAL if rng.random() < p_drop)


def prompt_sets() -> dict[str, list[str]]:
    """Full captions split into 'train' and 'heldout' (unseen colour-shape pairs)."""
    sets: dict[str, list[str]] = {"train": [], "heldout": []}
    for scene in all_scenes():
        split = "heldout" if (scene.colour, scene.shape) in HELDOUT_PAIRS else "train"
        sets[split].append(caption(scene))
    return sets


def eval_prompts(split: str, max_prompts: int) -> list[str]:
    """A fixed, evenly spread subset of a prompt set (the same for every run)."""
    prompts = prompt_sets()[split]
    idx = np.linspace(0, len(prompts) - 1, num=min(max_prompts, len(prompts))).round().astype(int)
    return [prompts[i] for i in idx]
