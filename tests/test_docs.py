"""The project documents itself: every `docs/<file>.md#<anchor>` reference in the code, configs,
tests and docs resolves to a heading of that file (GitHub's slug rules), every relative link
between the docs resolves, no file cites the old research notes or a folder outside the
repository, and the README stays a five-minute read."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("bench", "algorithms", "rewards", "config", "tests", "docs", "profiles")
FILES = ("Snakefile", "README.md", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".smk", ".txt", ""}
# the old notes, spelled so that this file does not cite them
RETIRED = tuple(name + ".md" for name in ("ALGORITHMS", "DESIGN", "STYLE", "MEASURED"))
REFERENCE = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
LINK = re.compile(r"\]\(([^)\s]+?\.md)?(?:#([\w-]+))?\)")
OUTSIDE = re.compile(r"(?<![\w.-])(?:\.\./)+shared/|(?<![\w/.-])shared/[\w.-]+\.md")
README_LINES = 200


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lowercase, punctuation other than '-' and '_'
    dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, duplicates numbered as GitHub does (-1, -2, ...); fenced code is skipped."""
    seen: dict[str, int] = {}
    out, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def _files() -> list[Path]:
    paths = [ROOT / f for f in FILES if (ROOT / f).is_file()]
    for folder in SOURCES:
        paths += [
            p
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
        ]
    return sorted(paths)


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return ""


def _where(path: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, pos) + 1}"


def test_the_slug_rules_are_githubs():
    assert slug("PRDP's beta") == "prdps-beta"
    assert slug("Log-probabilities: per-dimension mean, in fp32") == "log-probabilities-per-dimension-mean-in-fp32"
    assert slug("`citable.json`") == "citablejson"
    assert slug("How the default study's settings were chosen") == "how-the-default-studys-settings-were-chosen"
    assert slug("REINFORCE (DDPO-SF)") == "reinforce-ddpo-sf"


def test_every_docs_reference_resolves_to_a_heading():
    cache: dict[Path, set[str]] = {}
    broken = []
    for path in _files():
        text = _text(path)
        for m in REFERENCE.finditer(text):
            target = ROOT / "docs" / m.group(1)
            if not target.is_file():
                broken.append(f"{_where(path, text, m.start())}: {m.group(0)} (no file docs/{m.group(1)})")
                continue
            if m.group(2) and m.group(2) not in cache.setdefault(target, anchors(target)):
                broken.append(f"{_where(path, text, m.start())}: {m.group(0)} (no heading with that anchor)")
    assert not broken, "references that do not resolve:\n" + "\n".join(broken)


def test_links_between_the_docs_resolve():
    broken = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = _text(path)
        for m in LINK.finditer(text):
            file, anchor = m.group(1), m.group(2)
            if file and (file.startswith(("http:", "https:")) or "://" in file):
                continue
            target = (path.parent / file).resolve() if file else path
            if not target.is_file():
                broken.append(f"{_where(path, text, m.start())}: ({m.group(0)[2:-1]}) (no such file)")
            elif anchor and anchor not in anchors(target):
                broken.append(f"{_where(path, text, m.start())}: ({m.group(0)[2:-1]}) (no heading with that anchor)")
    assert not broken, "links that do not resolve:\n" + "\n".join(broken)


def test_no_file_cites_the_retired_notes_or_a_folder_outside_the_repository():
    found = []
    for path in _files():
        if path.name == Path(__file__).name:
            continue
        text = _text(path)
        for name in RETIRED:
            for m in re.finditer(re.escape(name), text):
                found.append(f"{_where(path, text, m.start())}: {name}")
        for m in OUTSIDE.finditer(text):
            found.append(f"{_where(path, text, m.start())}: {m.group(0)}")
    assert not found, "cite docs/<file>.md#<anchor> instead:\n" + "\n".join(found)


def test_the_reference_check_catches_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A section\n\n```\n## not a heading\n```\n\n## A section\n")
    assert anchors(page) == {"title", "a-section", "a-section-1"}
    bad = "docs/" + "algorithms.md#no-such-heading"
    m = REFERENCE.search(f"see {bad}.")
    assert m and m.group(2) not in anchors(ROOT / "docs" / "algorithms.md")


@pytest.mark.parametrize("name", ["README.md"])
def test_the_readme_is_a_five_minute_read(name):
    lines = (ROOT / name).read_text().splitlines()
    assert len(lines) <= README_LINES, f"{name} has {len(lines)} lines; move details to docs/"
    for needed in ("make study", "make test", "constraints.txt", "docs/README.md"):
        assert needed in "\n".join(lines), needed
