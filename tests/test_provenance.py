"""What code made a result: the source digest (code edits count; comments, formatting and docstrings do not),
the fingerprint of modules and packages, an experiment's fingerprint (its module, the siblings it imports, the
training code), and the version and git commit."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from analysis.training.provenance import (
    TRAINING_CODE,
    code_fingerprint,
    current_provenance,
    experiment_fingerprint,
    source_digest,
)

SOURCE = textwrap.dedent('''
    """A module."""
    import math

    RATE = 0.1


    def step(x, y):
        """Take a step."""
        return math.exp(-RATE * x) + y
''')


@pytest.mark.parametrize("same", [
    SOURCE.replace("import math\n", "import math  # a comment\n\n\n"),                       # comments, lines
    SOURCE.replace('"""Take a step."""', '"""Take one step: the docstring changed."""'),       # a docstring
    SOURCE.replace('"""Take a step."""\n', ""),                                                # no docstring
    SOURCE.replace("return math.exp(-RATE * x) + y", "return (math.exp(-RATE*x)\n            + y)"),  # layout
    SOURCE.replace('"""A module."""', "'''A module, reworded.'''"),
], ids=["comment", "docstring", "no_docstring", "layout", "module_docstring"])
def test_formatting_comments_and_docstrings_do_not_change_the_digest(same: str):
    assert source_digest(same) == source_digest(SOURCE)


@pytest.mark.parametrize("edit", [
    SOURCE.replace("RATE = 0.1", "RATE = 0.2"),
    SOURCE.replace("+ y", "- y"),
    SOURCE.replace("def step(x, y)", "def step(x, y=0)"),
    SOURCE.replace("return", "x = x\n    return"),  # a no-op statement is still code
    SOURCE.replace("math.exp", "math.expm1"),
], ids=["constant", "operator", "default", "no_op_statement", "call"])
def test_any_code_edit_changes_the_digest(edit: str):
    assert source_digest(edit) != source_digest(SOURCE)


@pytest.fixture()
def package(tmp_path: Path, monkeypatch):
    """A package ``fakelab`` with an experiment importing a sibling, and a sibling it does not import."""
    root = tmp_path / "fakelab"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "shared.py").write_text("FACTOR = 2\n")
    (root / "other.py").write_text("UNUSED = 1\n")
    (root / "exp.py").write_text("from fakelab.shared import FACTOR\nfrom . import helper\n\ndef run(x):\n"
                                 "    return FACTOR * helper.twice(x)\n")
    (root / "helper.py").write_text("def twice(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    for name in [n for n in sys.modules if n == "fakelab" or n.startswith("fakelab.")]:
        del sys.modules[name]


def test_an_experiment_fingerprint_follows_its_module_its_imported_siblings_and_the_training_code(package: Path):
    exp = importlib.import_module("fakelab.exp")
    base = experiment_fingerprint(exp)
    assert len(base) == 16 and base == experiment_fingerprint("fakelab.exp")
    (package / "other.py").write_text("UNUSED = 2\n")  # not imported by the experiment
    assert experiment_fingerprint(exp) == base
    (package / "exp.py").write_text((package / "exp.py").read_text() + "# a comment\n")
    assert experiment_fingerprint(exp) == base
    (package / "helper.py").write_text("def twice(x):\n    return x + x\n")  # imported relatively
    changed = experiment_fingerprint(exp)
    assert changed != base
    (package / "shared.py").write_text("FACTOR = 3\n")  # imported by name
    assert experiment_fingerprint(exp) not in (base, changed)
    assert code_fingerprint(exp) != code_fingerprint(exp, *TRAINING_CODE)


def test_a_package_stands_for_all_its_modules(package: Path):
    whole = code_fingerprint("fakelab")
    (package / "other.py").write_text("UNUSED = 2\n")
    assert code_fingerprint("fakelab") != whole
    with pytest.raises(ValueError, match="at least one module"):
        code_fingerprint()


def test_the_real_experiments_fingerprint_their_shared_modules_not_the_report():
    from analysis.training import provenance

    names = {m.__name__ for m in provenance._package_imports(importlib.import_module("analysis.experiments.smoothness"))}
    assert names == {"analysis.experiments.smoothness", "analysis.experiments.runner", "analysis.experiments.arms",
                     "analysis.experiments.verdict", "analysis.experiments.norm_variants"}
    assert experiment_fingerprint("analysis.experiments.smoothness") != experiment_fingerprint(
        "analysis.experiments.dead_units")


def test_the_version_and_commit_of_this_checkout():
    here = Path(__file__).parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()
    code = current_provenance("abc")
    assert code.code_fingerprint == "abc" and code.code_version == "0.1.0" and code.code_commit == head
    assert code.describe().startswith(f"fingerprint abc, inception-lab 0.1.0, commit {head[:7]}")
