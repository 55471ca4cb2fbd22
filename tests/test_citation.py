"""The citation files are generated from the registry: every built-in method declares its paper,
the committed references.bib and CITATION.cff's references equal what `python -m
t2i_rl_bench.citation` writes, and the .bib is well formed (one entry per key)."""

import re
from pathlib import Path

import yaml

from t2i_rl_bench import citation
from t2i_rl_bench.registry import ALGORITHMS

ROOT = Path(__file__).resolve().parents[1]


def test_every_built_in_method_declares_its_paper():
    own = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).__module__.startswith(citation.OWN_MODULES)]
    missing = [n for n in own if ALGORITHMS.get(n).paper is None]
    assert not missing, f"methods without a `paper`: {missing}"
    for name in ("reinforce", "ddpo_is", "loop", "prdp", "dancegrpo", "pcpo"):
        assert name in citation.method_papers()


def test_the_committed_references_are_the_generated_ones():
    assert (ROOT / "references.bib").read_text() == citation.bibtex(), (
        "references.bib is stale: run `python -m t2i_rl_bench.citation` (make references)"
    )
    cff = (ROOT / "CITATION.cff").read_text()
    assert cff == citation.cff(cff), "CITATION.cff's references are stale: run `python -m t2i_rl_bench.citation`"
    data = yaml.safe_load(cff)
    assert data["preferred-citation"]["title"] and len(data["references"]) == len(citation.papers())


def test_the_bib_has_one_entry_per_key_and_every_method_key_resolves():
    bib = citation.bibtex()
    keys = re.findall(r"^@\w+\{([^,]+),", bib, re.M)
    assert len(keys) == len(set(keys)) == len(citation.papers()) + 1  # + the harness itself
    assert set(p.key for p in citation.method_papers().values()) <= set(keys)
    assert bib.count("{") == bib.count("}")
