"""The report writer: every table in three formats, figures as PNG, deterministic, never half-written."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import analysis.report.build as report_build
from analysis.report.build import build_report
from analysis.report.document import Figure, Section, Table


def tiny_section(mode: str, seed: int, results_root=None) -> Section:
    frame = pd.DataFrame({"model": ["a", "b"], "params": [1_000 + seed, 2_000], "gmacs": [0.5, 1.25]})

    def draw() -> plt.Figure:
        fig, ax = plt.subplots()
        ax.bar(frame["model"], frame["params"])
        return fig

    return Section(title=f"Tiny ({mode})", text="Two rows.", verdict="shows",
                   tables=[Table("tiny", "A tiny table", frame, notes=["a note"]),
                           Table("tiny_long", "Kept out of the index", frame, inline=False)],
                   figures=[Figure("tiny_bars", "Bars", draw)])


def broken_section(mode: str, seed: int, results_root=None) -> Section:
    raise RuntimeError("experiment crashed")


@pytest.fixture
def sections(monkeypatch):
    monkeypatch.setattr(report_build, "SECTIONS", [("tiny", tiny_section), ("broken", broken_section)])
    monkeypatch.setattr(report_build, "QUICK_SECTIONS", ("tiny", "broken"))


def test_writes_every_format_and_links_them(tmp_path, sections):
    index = build_report(tmp_path / "reports", sections=["tiny"], seed=3, progress=False)
    folder = index.parent
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["index.md", "tiny.csv", "tiny.md", "tiny.tex", "tiny_bars.png", "tiny_long.csv", "tiny_long.md",
                     "tiny_long.tex"]
    text = index.read_text()
    assert "## Tiny (quick)" in text and "**Verdict at this scale:** shows" in text
    assert "1,003" in text
    assert "![Bars](tiny_bars.png)" in text and "[CSV](tiny_long.csv)" in text
    assert "Kept out of the index" in text and text.count("| b ") == 1  # tiny_long is linked, not inlined
    assert pd.read_csv(folder / "tiny.csv")["params"].tolist() == [1_003, 2_000]
    assert r"\begin{tabular}" in (folder / "tiny.tex").read_text()
    assert (folder / "tiny_bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_bytes(tmp_path, sections):
    first = build_report(tmp_path / "one", sections=["tiny"], progress=False).parent
    second = build_report(tmp_path / "two", sections=["tiny"], progress=False).parent
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name


def test_a_failing_section_leaves_the_old_report_intact(tmp_path, sections):
    out = tmp_path / "reports"
    build_report(out, sections=["tiny"], progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="experiment crashed"):
        build_report(out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["reports"]  # no staging folder left behind


def test_bad_arguments(tmp_path, sections):
    with pytest.raises(ValueError, match=r"unknown report section\(s\) \['nope'\]; known sections: tiny, broken"):
        build_report(tmp_path / "r", sections=["nope"])
    with pytest.raises(ValueError, match="mode must be 'quick' or 'full'"):
        build_report(tmp_path / "r", mode="fast")  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()


def test_the_real_sections_are_registered():
    from analysis.experiments import EXPERIMENTS

    keys = [key for key, _ in report_build.SECTIONS]
    assert keys == ["zoo", "cost_by_grid", "factorization", *EXPERIMENTS]
    assert set(report_build.QUICK_SECTIONS) < set(keys)


def test_default_sections_per_mode(tmp_path, monkeypatch):
    ran = []

    def recorder(key):
        def build(mode, seed, results_root):
            ran.append((key, mode))
            return Section(title=key)
        return build

    monkeypatch.setattr(report_build, "SECTIONS", [(k, recorder(k)) for k in ("a", "b", "c")])
    monkeypatch.setattr(report_build, "QUICK_SECTIONS", ("a", "c"))
    build_report(tmp_path / "q", progress=False)
    build_report(tmp_path / "f", mode="full", progress=False)
    build_report(tmp_path / "all", sections="all", progress=False)
    assert ran == [("a", "quick"), ("c", "quick"), ("a", "full"), ("b", "full"), ("c", "full"),
                   ("a", "quick"), ("b", "quick"), ("c", "quick")]


@pytest.mark.slow
def test_zoo_section_matches_the_references(tmp_path):
    from analysis.report.sections.zoo import zoo_section

    section = zoo_section("quick", 0)
    zoo = section.tables[0].frame.set_index("model")
    exact = zoo.dropna(subset=["ref_params"])
    assert (exact["params_delta"].drop(index="small_inception") == 0).all()
    assert zoo.loc["inception_v3", "conv_fc_gmacs"] == pytest.approx(5.713, abs=1e-3)
    assert zoo.loc["inception_resnet_v2", "top1_err"] == 19.9
