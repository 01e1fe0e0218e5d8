"""The report writer: every table in three formats, figures as PNG, deterministic, never half-written."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import analysis.report.build as report_build
from analysis.report.build import build_report
from analysis.experiments.verdict import Claim, PairedEffect, Verdict
from analysis.report.document import Figure, Section, Table
from analysis.report.latex import INSTALL_HINT, compile_pdf, pdflatex_available
from analysis.report.tables import Column


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
    index = build_report(tmp_path / "reports", sections=["tiny"], seed=3, progress=False, pdf=False)
    folder = index.parent
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["index.md", "provenance.json", "report.tex", "tiny.csv", "tiny.md", "tiny.tex", "tiny_bars.png",
                     "tiny_long.csv", "tiny_long.md", "tiny_long.tex"]
    text = index.read_text()
    assert "## Tiny (quick)" in text and "**Verdict at this scale:** shows" in text
    assert "1,003" in text
    assert "![Bars](tiny_bars.png)" in text and "[CSV](tiny_long.csv)" in text
    assert "Kept out of the index" in text and text.count("| b ") == 1  # tiny_long is linked, not inlined
    assert pd.read_csv(folder / "tiny.csv")["params"].tolist() == [1_003, 2_000]
    assert r"\begin{tabular}" in (folder / "tiny.tex").read_text()
    assert (folder / "tiny_bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _without_provenance(index: Path) -> list[str]:
    return [line for line in index.read_text().splitlines()
            if not line.startswith(("Code:", "Machine:", "Per section"))]


def test_same_seed_same_bytes(tmp_path, sections):
    """Every table and figure is byte-identical; index.md differs only in its provenance lines (time, machine)."""
    first = build_report(tmp_path / "one", sections=["tiny"], progress=False, pdf=False).parent
    second = build_report(tmp_path / "two", sections=["tiny"], progress=False, pdf=False).parent
    for path in first.iterdir():
        if path.name not in ("index.md", "provenance.json", "report.tex"):
            assert path.read_bytes() == (second / path.name).read_bytes(), path.name
    assert _without_provenance(first / "index.md") == _without_provenance(second / "index.md")


def test_a_failing_section_leaves_the_old_report_intact(tmp_path, sections):
    out = tmp_path / "reports"
    build_report(out, sections=["tiny"], progress=False, pdf=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="experiment crashed"):
        build_report(out, progress=False, pdf=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["reports"]  # no staging folder left behind


def test_bad_arguments(tmp_path, sections):
    with pytest.raises(ValueError, match=r"unknown report section\(s\) \['nope'\]; known sections: tiny, broken"):
        build_report(tmp_path / "r", sections=["nope"])
    with pytest.raises(ValueError, match="tier must be one of quick, standard, full"):
        build_report(tmp_path / "r", tier="fast")  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()


def test_the_real_sections_are_registered():
    from analysis.experiments import EXPERIMENTS

    keys = [key for key, _ in report_build.SECTIONS]
    assert keys == ["zoo", "cost_by_grid", "factorization", "design_principles", *EXPERIMENTS, "blocks"]
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
    build_report(tmp_path / "q", progress=False, pdf=False)
    build_report(tmp_path / "f", tier="full", progress=False, pdf=False)
    build_report(tmp_path / "all", sections="all", progress=False, pdf=False)
    assert ran == [("a", "quick"), ("c", "quick"), ("a", "full"), ("b", "full"), ("c", "full"),
                   ("a", "quick"), ("b", "quick"), ("c", "quick")]


def _claim(word: str, effect: float, low: float, high: float) -> Claim:
    paired = PairedEffect(n=5, treatment_mean=0.8, control_mean=0.8 - effect, effect=effect, median=effect, sd=0.01,
                          ci_low=low, ci_high=high, mde=0.02, p_value=0.01)
    return Claim("BN trains faster", "Ioffe & Szegedy 2015, sec. 4.2", "BN reaches the accuracy in fewer steps",
                 "tiny", "area under the validation curve", Verdict(word, paired, "10/10", ""))


def test_claims_at_a_glance_and_claims_csv(tmp_path, monkeypatch):
    def claiming(mode, seed, results_root):
        return Section(title="Tiny claims", claims=[_claim("supports", 0.05, 0.02, 0.08),
                                                    _claim("no effect detected", 0.01, -0.01, 0.03)])

    monkeypatch.setattr(report_build, "SECTIONS", [("claims", claiming)])
    index = build_report(tmp_path / "r", tier="standard", sections=["claims"], progress=False, pdf=False)
    text = index.read_text()
    glance = text.index("## Claims at a glance")
    assert glance < text.index("## Tiny claims")  # at the top, before the sections
    assert "[BN trains faster](#tiny-claims)" in text and "+0.05 [+0.02, +0.08]" in text
    assert "**no effect detected**" in text and "**Tier: `standard`**" in text
    claims = pd.read_csv(index.parent / "claims.csv")
    assert list(claims.columns[:12]) == ["claim", "paper", "statement", "experiment", "measure", "effect", "ci_low",
                                         "ci_high", "seeds", "arms_learned", "mde", "verdict"]
    assert claims["verdict"].tolist() == ["supports", "no effect detected"]
    assert claims["section"].tolist() == ["index.md#tiny-claims"] * 2
    provenance = json.loads((index.parent / "provenance.json").read_text())
    assert provenance["tier"] == "standard" and set(provenance["sections"]) == {"claims"}
    assert {"torch", "fvcore"} <= set(provenance["packages"])


def test_provenance_gives_each_trained_sections_runs_and_cpu_time(tmp_path, monkeypatch):
    """The CPU time of a section's training runs is read from its results (each run's last cpu_s), so a report
    re-rendered from cached results still says what computing them cost."""
    monkeypatch.setattr(report_build, "SECTIONS", [("claims", lambda mode, seed, root: Section(title="Claims"))])
    results = tmp_path / "results" / "claims" / "standard-seed0" / "results.jsonl"
    results.parent.mkdir(parents=True)
    rows = [{"point_id": "a", "step": 10, "cpu_s": 1.5}, {"point_id": "a", "step": 20, "cpu_s": 3.0},
            {"point_id": "b", "step": 10, "cpu_s": 4.0}, {"point_id": "b", "split": "val", "step": 10}]
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    index = build_report(tmp_path / "r", tier="standard", progress=False, pdf=False,
                         results_root=tmp_path / "results")
    provenance = json.loads((index.parent / "provenance.json").read_text())
    assert provenance["training"] == {"claims": {"runs": 2, "cpu_s": 7.0}}
    text = index.read_text()
    assert "results hold 2 training runs that took 7 CPU-s to compute" in text
    assert "(its results: 2 runs, 7 CPU-s of training)" in text


def test_a_changed_report_folder_is_not_an_uncommitted_change_of_the_code(tmp_path, monkeypatch):
    import subprocess

    from analysis.report import provenance as provenance_module

    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "reports").mkdir()
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    (repo / "reports" / "index.md").write_text("old\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "one"]):
        subprocess.run(git + args, check=True, capture_output=True)
    monkeypatch.setattr(provenance_module, "__file__", str(repo / "pkg" / "provenance.py"))
    (repo / "reports" / "index.md").write_text("re-rendered\n")
    assert provenance_module.collect("standard", 0, "c", output=repo / "reports").dirty is False
    assert provenance_module.collect("standard", 0, "c").dirty is True  # without the folder named, it counts
    (repo / "pkg" / "code.py").write_text("x = 2\n")
    assert provenance_module.collect("standard", 0, "c", output=repo / "reports").dirty is True


def test_each_tier_has_its_folder_and_another_tiers_report_is_not_overwritten(tmp_path, monkeypatch, sections):
    monkeypatch.chdir(tmp_path)
    quick = build_report(sections=["tiny"], progress=False, pdf=False)
    assert quick == Path("runs") / "report-quick" / "index.md"
    standard = build_report(tier="standard", sections=["tiny"], progress=False, pdf=False)
    assert standard == Path("reports") / "index.md"
    before = {p.name: p.read_bytes() for p in Path("reports").iterdir()}
    with pytest.raises(ValueError, match="reports holds the standard tier's report; writing the quick tier there"):
        build_report(Path("reports"), tier="quick", sections=["tiny"], progress=False)
    assert {p.name: p.read_bytes() for p in Path("reports").iterdir()} == before
    build_report(Path("reports"), tier="quick", sections=["tiny"], progress=False, force=True, pdf=False)
    assert json.loads(Path("reports/provenance.json").read_text())["tier"] == "quick"


def _long_section(mode, seed, results_root=None) -> Section:
    frame = pd.DataFrame({"grid": range(8, 60), "scheme": ["5x5->2x3x3"] * 52, "ratio": [18 / 25] * 52})
    return Section(title="Symbols: 5x5 -> two 3x3 >= 28% ± 0", text="`code`, **bold** and a [link](#x).",
                   verdict="supports: +0.05 [+0.02, +0.08]", claims=[_claim("supports", 0.05, 0.02, 0.08)],
                   tables=[Table("long", "A long table (52 rows > 40): a longtable in the appendix", frame,
                                 inline=False),
                           Table("short", "A short one with a display spec", frame.head(3),
                                 columns={"grid": Column("Grid (px)"), "ratio": Column("Ratio", digits=2, best="max")})],
                   figures=[Figure("fig", "A figure", lambda: plt.subplots()[0])])


@pytest.mark.skipif(not pdflatex_available(), reason=f"pdflatex is not installed ({INSTALL_HINT})")
@pytest.mark.slow
def test_the_report_compiles_to_a_pdf_and_every_table_compiles_on_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(report_build, "SECTIONS", [("long", _long_section)])
    folder = build_report(tmp_path / "r", tier="standard", progress=False).parent
    assert (folder / "report.pdf").read_bytes()[:5] == b"%PDF-"
    source = (folder / "report.tex").read_text()
    assert r"\input{claims.tex}" in source and r"\appendix" in source and source.index(r"\input{short.tex}") < \
        source.index(r"\appendix") < source.index(r"\input{long.tex}")
    long_table = (folder / "long.tex").read_text()
    assert long_table.startswith(r"\begin{longtable}") and r"\label{tab:long}" in long_table
    assert r"5$\times$5$\rightarrow$2$\times$3$\times$3" in long_table and "->" not in long_table
    for table in ("long", "short", "claims"):
        standalone = tmp_path / f"alone-{table}.tex"
        standalone.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage{longtable}\n"
                              f"\\begin{{document}}\n\\input{{{folder / table}.tex}}\n\\end{{document}}\n")
        compile_pdf(tmp_path, standalone.name)
        assert (tmp_path / f"alone-{table}.pdf").exists()


@pytest.mark.slow
def test_zoo_section_matches_the_references(tmp_path):
    from analysis.report.sections.zoo import zoo_section

    section = zoo_section("quick", 0)
    zoo = section.tables[0].frame.set_index("model")
    exact = zoo.dropna(subset=["ref_params"])
    assert (exact["params_delta"].drop(index="small_inception") == 0).all()
    assert zoo.loc["inception_v3", "conv_fc_gmacs"] == pytest.approx(5.713, abs=1e-3)
    assert zoo.loc["inception_resnet_v2", "top1_err"] == 19.9


# ---------------------------------------------------------------------------- the counting and factorization sections
def _drawn(section: Section) -> list[str]:
    """Draw every figure of ``section`` (closing it after); returns the stems."""
    for figure in section.figures:
        drawn = figure.draw()
        assert isinstance(drawn, plt.Figure) and drawn.axes, figure.stem
        plt.close(drawn)
    return [figure.stem for figure in section.figures]


@pytest.mark.usefixtures("one_thread")
def test_cost_by_grid_section_on_two_small_models(monkeypatch):
    """Two models at small inputs instead of the zoo at native size: every MAC of each model lands in its long
    table, and the wide table has one column per spatial grid, largest first."""
    from analysis.instruments.counting import count_model, create_model_for_counting, totals
    from analysis.report.sections import zoo as report_sections

    sizes = {"small_inception": 32, "googlenet": 64, "inception_v3": 75}  # inception_v3: the notes' convention line
    counts = {name: count_model(create_model_for_counting(name), input_size=size) for name, size in sizes.items()}
    monkeypatch.setattr(report_sections, "list_models", lambda: ["googlenet", "small_inception"])
    monkeypatch.setattr(report_sections, "_counts", counts.__getitem__)
    monkeypatch.setattr(report_sections, "model_info", lambda name: SimpleNamespace(input_size=sizes[name]))
    section = report_sections.cost_by_grid_section("quick", 0)
    wide, long = (table.frame for table in section.tables)
    assert [table.stem for table in section.tables] == ["gmacs_by_grid", "cost_by_grid"]
    assert wide["model"].tolist() == ["googlenet", "small_inception"]
    # googlenet at 64 px: 32x32 is stride 1/2 ... 2x2 is 1/32; small_inception at 32 px starts at 1/1.
    assert list(wide.columns) == ["model", "1/1", "1/2", "1/4", "1/8", "1/16", "1/32", "head (1x1)", "total"]
    for name in ("googlenet", "small_inception"):
        assert long.loc[long["model"] == name, "macs"].sum() == totals(counts[name])["macs"]
        spatial = long[(long["model"] == name) & long["grid"].str.contains("x")]
        assert wide.set_index("model").loc[name, "total"] == pytest.approx(spatial["gmacs"].sum(), abs=1e-9)
    by_model = wide.set_index("model")
    assert by_model.loc["small_inception", "1/8"] == 0.0  # its last stage runs at 8x8 of 32: stride 1/4
    assert by_model.loc["googlenet", "1/8"] == pytest.approx(
        long.loc[(long["model"] == "googlenet") & (long["grid"] == "8x8"), "gmacs"].sum())
    assert section.tables[0].notes[0].startswith("MACs: fvcore counts one fused multiply-add")
    assert _drawn(section) == ["gmacs_by_grid"]


@pytest.mark.usefixtures("one_thread")
def test_blocks_appendix_has_one_table_per_model_summing_to_its_total(monkeypatch):
    from analysis.instruments.counting import count_model, create_model_for_counting, totals
    from analysis.report.sections import zoo as report_sections

    counts = {"small_inception": count_model(create_model_for_counting("small_inception"), input_size=32)}
    monkeypatch.setattr(report_sections, "list_models", lambda: ["small_inception"])
    monkeypatch.setattr(report_sections, "_counts", counts.__getitem__)
    section = report_sections.blocks_section("quick", 0)
    (table,) = section.tables
    assert table.stem == "blocks_small_inception" and not table.inline
    frame = table.frame.set_index("block")
    assert frame.loc["(total)", "params"] == 1_651_114 == frame.drop(index="(total)")["params"].sum()
    assert frame.loc["(total)", "macs"] == totals(counts["small_inception"])["macs"]


@pytest.mark.usefixtures("one_thread")
def test_factorization_section_on_one_small_study(monkeypatch):
    """The study at grids 16 and 17 with 8 channels, a fixed whole-model table: the 17x17 table, the notes naming
    each whole-model variant; a study whose measured cost left its closed form stops the section."""
    from analysis.instruments.factorization import factorization_study
    from analysis.report.sections import factorization as report_sections

    study = factorization_study(grids=[16, 17], channels=8)
    undo = pd.DataFrame({"group": ["inception_v3", "inception_v3"], "model": ["inception_v3", "inception_v3"],
                         "knobs": ["(defaults)", "factorize_a=False"], "variant": ["as released", "5x5 back"],
                         "params": [23_834_568, 23_880_072], "params_delta": [0, 45_504]})
    monkeypatch.setattr(report_sections, "factorization_study", lambda grids, channels: study)
    monkeypatch.setattr(report_sections, "undo_factorization_table", lambda: undo)
    section = report_sections.section("quick", 0)
    at_17, everything, whole = (table.frame for table in section.tables)
    assert (at_17.columns[:3].tolist(), len(at_17)) == (["scheme", "n", "form"], 8)  # 4 schemes x 2 forms
    assert everything is study and "variant" not in whole.columns and len(whole) == 2
    assert section.tables[2].notes[1:] == ["inception_v3 (defaults): as released",
                                           "inception_v3 factorize_a=False: 5x5 back"]
    assert at_17.set_index(["scheme", "n", "form"]).loc[("nxn->1xn+nx1", 7, "factorized"), "ratio"] == 2 / 7
    assert _drawn(section) == ["factorization_ratio_by_grid"]
    broken = study.assign(exact=[True] * (len(study) - 1) + [False])
    monkeypatch.setattr(report_sections, "factorization_study", lambda grids, channels: broken)
    with pytest.raises(RuntimeError, match="differs from its closed form"):
        report_sections.section("quick", 0)


class _Ran(Exception):
    """Raised by a stand-in for an experiment's run: what the report's section asked it to run."""


def test_experiment_sections_run_their_experiment_with_the_tier_seed_and_results_root(monkeypatch, tmp_path):
    import importlib

    from analysis.experiments import EXPERIMENTS

    builders = dict(report_build.SECTIONS)
    for name in EXPERIMENTS:
        module = importlib.import_module(f"analysis.report.sections.{name}")

        def fake_run(config, *, results_dir=None, progress=True):
            raise _Ran(config, results_dir)

        monkeypatch.setattr(module, "run", fake_run)
        with pytest.raises(_Ran) as ran:
            builders[name]("quick", 3, tmp_path)
        config, results_dir = ran.value.args
        assert config.get("seed", 3) == 3, name
        assert str(results_dir).startswith(str(tmp_path / name)), name


@pytest.mark.skipif(not pdflatex_available(), reason=f"pdflatex is not installed ({INSTALL_HINT})")
def test_the_claims_table_keeps_inside_the_pdf_margins(tmp_path):
    """The longest claim name of the committed report wraps in its column: pdflatex reports no overfull line
    (without the wrapping column this table ran 130 pt, 46 mm, past the right margin)."""
    import subprocess

    from analysis.report.latex import document
    from analysis.report.tables import render

    long_name = "Residual connections speed up training (Inception-ResNet-v2 vs Inception-ResNet-v2, no shortcut)"
    claim = _claim("not tested", 0.405, 0.239, 0.571)
    frame = pd.DataFrame([{**claim.row(), "claim": long_name}])
    table = render(frame, "latex", columns=report_build.CLAIM_DISPLAY, title="Claims at a glance")
    (tmp_path / "claims.tex").write_text(table)
    (tmp_path / "report.tex").write_text(document([], header=[], claims_table="claims"))
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"], cwd=tmp_path,
                          capture_output=True, text=True, errors="replace", timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    log = (tmp_path / "report.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, [line for line in log.splitlines() if "Overfull" in line]
