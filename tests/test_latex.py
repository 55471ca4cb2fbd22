"""Every LaTeX table the harness writes compiles with pdflatex, in a plain article with a page's
text width, without an error and without a box wider than the text: the tables of a simulated
study (written here) and the committed ones under results/. CI installs Debian's texlive
(.ci/run) and sets REQUIRE_LATEX=1, so a missing pdflatex fails there; locally it skips."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import _config, _simulate

from t2i_rl_bench import tables

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = r"""\documentclass[10pt]{article}
\usepackage[letterpaper,margin=1in]{geometry}
%s
\begin{document}
%s
\end{document}
"""


def _pdflatex() -> str:
    found = shutil.which("pdflatex")
    if not found:
        if os.environ.get("REQUIRE_LATEX") == "1":
            pytest.fail("pdflatex missing: apt-get install texlive-latex-base texlive-latex-recommended")
        pytest.skip("pdflatex not installed (CI installs it; REQUIRE_LATEX=1 makes this a failure)")
    return found


def _compile(tex_files: list[Path], work: Path) -> str:
    """Compile one document that \\input's every table (twice, for longtable's widths); returns
    the log, failing on an error or an overfull box wider than the text."""
    body = "\n".join(
        f"\\section*{{\\detokenize{{{f.parent.parent.name}/{f.name}}}}}\n\\input{{{f.as_posix()}}}\n\\clearpage"
        for f in tex_files
    )
    (work / "tables.tex").write_text(DOCUMENT % (tables.TEX_PACKAGES, body))
    exe = _pdflatex()
    for _ in range(2):
        done = subprocess.run(
            [exe, "-interaction=nonstopmode", "-halt-on-error", "tables.tex"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
    log = (work / "tables.log").read_text(errors="replace")
    assert done.returncode == 0, "pdflatex failed:\n" + "\n".join(
        line for line in log.splitlines() if line.startswith("!") or "Error" in line
    )
    overfull = [line for line in log.splitlines() if line.startswith("Overfull \\hbox") and _points(line) > 1.0]
    assert not overfull, "tables wider than the text:\n" + "\n".join(overfull)
    return log


def _points(line: str) -> float:
    m = re.search(r"\(([\d.]+)pt too wide\)", line)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latex")
    cfg = _config(tmp)
    _simulate(cfg, tmp / "runs")
    tables.aggregate(cfg, tmp / "runs", tmp / "results" / "tables")
    return tmp / "results" / "tables"


def test_a_studys_tables_compile_and_fit_the_page(simulated, tmp_path):
    files = sorted(simulated.glob("*.tex"))
    assert {f.stem for f in files} >= {"eval", "derived", "headline", "verdicts", "probe"}
    for f in files:
        text = f.read_text()
        assert "nan" not in re.sub(r"%.*", "", text).lower().split(), f  # missing values are '--'
        assert all(ord(c) < 128 for c in re.sub(r"%.*", "", text)), f"non-ASCII in {f.name}"
    _compile(files, tmp_path)


def test_the_self_consuming_loops_tables_compile(tmp_path):
    """recursive.tex and recursive_decay.tex (a variant column, generations instead of budgets)."""
    import json

    import numpy as np

    from t2i_rl_bench import study

    cfg = study.load(ROOT / "config" / "recursive.yaml", check_paths=False)
    cfg = study.validate({**cfg, "seeds": [0, 1, 2], "algorithms": {"reinforce": {}, "pcpo": {}}}, check_paths=False)
    runs_root, out = tmp_path / "runs", tmp_path / "tables"
    rng = np.random.default_rng(0)
    for key in study.runs(cfg):
        run = runs_root / key.path
        (run / "recursive").mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"status": "finished"}))
        for variant in study.recursive_variants(cfg):
            rows = [{"generation": g, "quality/fid": 30 + rng.normal(1, 0.5) * g} for g in range(4)]
            decay = {"decay/quality/fid": float(rng.normal(1, 0.5))}
            (run / "recursive" / f"{variant}.json").write_text(json.dumps({"rows": rows, "decay": decay}))
    out.mkdir()
    tables.recursive_tables(cfg, runs_root, out, tables.provenance(cfg))
    files = sorted(out.glob("*.tex"))
    assert [f.name for f in files] == ["recursive.tex", "recursive_decay.tex"]
    _compile(files, tmp_path)


def test_the_headline_is_one_compact_table_per_reward_and_the_base_is_shown_once(simulated):
    head = (simulated / "headline.tex").read_text()
    assert head.count("\\begin{table}") == 2 and "\\begin{longtable}" not in head  # two training rewards
    assert "$\\Delta$" in head and "$\\pm$" in head and "\\toprule" in head
    ev = (simulated / "eval.tex").read_text()
    body = [line for line in ev.splitlines() if not line.startswith("%")]
    fid_base = [line for line in body if line.startswith("base &") or " & base & " in line]
    # one base row per metric and reward, never one per method
    assert fid_base and not [line for line in body if re.match(r"^\S* ?& pcpo & 0 &", line)]


def test_committed_tables_compile(tmp_path):
    """Every committed .tex table, whatever study wrote it (a preset study whose runs are gone is
    re-rendered from its CSVs: python -m t2i_rl_bench.tables rerender <folder>)."""
    files = sorted(ROOT.glob("results/**/tables/*.tex"))
    assert files, "no committed tables under results/"
    _compile(files, tmp_path)


def _body_cells(md: Path) -> list[str]:
    rows = [line for line in md.read_text().splitlines() if line.startswith("|")]
    return [c.strip() for line in rows for c in re.split(r"(?<!\\)\|", line)]


def test_committed_markdown_tables_show_no_nan():
    files = sorted(ROOT.glob("results/**/tables/*.md"))
    assert files
    for f in files:
        assert not [c for c in _body_cells(f) if c.lower() in ("nan", "**nan**")], f  # missing values are '--'


def test_rerendering_rewrites_md_and_tex_from_the_csvs_alone(simulated, tmp_path):
    """The CSVs stay byte-identical; the .md/.tex come out as aggregate wrote them, plus one header
    line naming the writer's commit; a column an older CSV lacks shows '--' and still compiles."""
    import shutil as sh

    folder = tmp_path / "tables"
    sh.copytree(simulated, folder)
    csvs = {f.name: f.read_bytes() for f in folder.glob("*.csv")}
    views = {  # failed_runs.md is the failure log's own (bench/failures.py), not a rendered table
        f.name: f.read_text() for f in folder.glob("*") if f.suffix in (".md", ".tex") and f.stem != "failed_runs"
    }
    for name in views:
        (folder / name).unlink()
    written = tables.rerender(folder, commit="abc123")
    assert {f.name for f in written} == set(views)  # every table aggregate rendered, nothing else
    assert {f.name: f.read_bytes() for f in folder.glob("*.csv")} == csvs
    for name, text in views.items():
        again = (folder / name).read_text().splitlines()
        added = [line for line in again if "re-rendered from" in line]
        assert len(added) == 1 and "commit abc123" in added[0], name
        assert [line for line in again if line not in added] == text.splitlines(), name

    # an older headline.csv: no optimiser steps, no not_finished column
    head = folder / "headline.csv"
    header, table = tables._read_csv(head)
    older = table.drop(columns=[c for c in ("steps", "optimiser_steps", "lr_x_steps", "not_finished") if c in table])
    head.write_text("".join(f"# {line}\n" for line in header) + older.to_csv(index=False, float_format="%.6g"))
    tables.rerender(folder, commit="abc123")
    md = [line for line in (folder / "headline.md").read_text().splitlines() if line.startswith("| ")]
    columns, row = ([c.strip() for c in line.split("|")] for line in (md[0], md[1]))
    assert row[columns.index("not finished")] == "--" and row[columns.index("opt. steps")] == "--"
    steps = "{@{}c@{}}steps\\end{tabular}"
    assert steps in views["headline.tex"] and steps not in (folder / "headline.tex").read_text()
    _compile(sorted(folder.glob("*.tex")), tmp_path)


def test_rerendering_names_a_folder_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.csv"):
        tables.rerender(tmp_path)
    (tmp_path / "eval.csv").write_text("model,reward\nm,r\n")
    with pytest.raises(ValueError, match="eval.csv: no 'mean over seeds"):
        tables.rerender(tmp_path)


@pytest.mark.parametrize(
    "value, text",
    [
        (0.026912, "0.0269"),
        (0.031, "0.0310"),
        (14.4221, "14.4"),
        (512.0, "512"),
        (1234.56, "1235"),
        (-0.000546657, "-0.000547"),
        (3.2e-6, "3.20e-06"),
        (float("nan"), "--"),
        (float("inf"), "--"),
    ],
)
def test_numbers_have_three_significant_digits_and_missing_is_a_dash(value, text):
    assert tables.fmt_number(value) == text
