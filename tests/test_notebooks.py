"""The notebooks in notebooks/: stored without outputs, written against the public API only, and each one runs
top to bottom in quick mode (executed with nbclient on a kernel of this very interpreter)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_zoo_tour", "02_factorization", "03_dead_units", "04_bn_smoothness", "05_bring_your_own_model"]

# Notebooks that need more than 60 s in quick mode on 2 CPU cores: none. Measured whole (kernel start included)
# on 2 shared cores at load ~2: 01 10.5 s, 02 11.6 s, 03 11.6 s, 04 16.1 s, 05 13.1 s. When other jobs load
# those cores, torch's threads contend and the same runs took 50 s to 220 s, hence the generous cell timeout.
SLOW: set[str] = set()

# The public API: the two packages' top-level names, and these modules of analysis named in the docs.
PUBLIC_MODULES = {"inception_models", "analysis", "analysis.report.figures", "analysis.data"}
OUR_PACKAGES = ("inception_models", "analysis")

# A kernel spec of its own, pointing at this interpreter, so a user-level "python3" kernel of another Python
# (the per-user kernel folder is searched before the virtual environment's) cannot run the notebooks elsewhere.
KERNEL_NAME = "inception-lab-tests"
CELL_TIMEOUT_S = 600


def _params(marks_slow: bool) -> list:
    return [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if marks_slow and p.stem in SLOW else [])
            for p in NOTEBOOKS]


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _python_source(cell_source: str) -> str:
    # IPython magics (%matplotlib inline) are not Python; blank them so ast can parse the rest.
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell_source.splitlines())


def test_the_five_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", _params(marks_slow=False))
def test_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = _code_cells(nb)
    assert code, f"{path.name} has no code cells"
    for i, cell in enumerate(code):
        assert cell.get("outputs") == [], f"{path.name}: code cell {i} stores outputs; strip them before committing"
        assert cell.get("execution_count") is None, f"{path.name}: code cell {i} stores an execution count"
    assert any(c.cell_type == "markdown" for c in nb.cells)


@pytest.mark.parametrize("path", _params(marks_slow=False))
def test_uses_only_the_public_api(path: Path):
    nb = nbformat.read(path, as_version=4)
    setup = _code_cells(nb)[0].source
    for convention in ("torch.set_num_threads(2)", "torch.manual_seed(", "INCEPTION_LAB_QUICK", "%matplotlib inline"):
        assert convention in setup, f"{path.name}: the first code cell should contain {convention!r}"
    for cell in _code_cells(nb):
        tree = ast.parse(_python_source(cell.source))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                modules, names = [node.module or ""], [a.name for a in node.names]
                if node.module == "analysis":  # `from analysis import figures` names a public module
                    modules += [f"analysis.{n}" for n in names if f"analysis.{n}" in PUBLIC_MODULES]
            elif isinstance(node, ast.Import):
                modules, names = [a.name for a in node.names], []
            else:
                continue
            ours = [m for m in modules if m.split(".")[0] in OUR_PACKAGES]
            for module in ours:
                assert module in PUBLIC_MODULES, f"{path.name} imports {module}, which is not public API"
            private = [n for n in names if n.startswith("_")]
            assert not (ours and private), f"{path.name} imports private names {private} from {modules[0]}"


@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (inception-lab tests)",
        "language": "python",
    }))
    return root


@pytest.mark.parametrize("path", _params(marks_slow=True))
def test_runs_top_to_bottom_in_quick_mode(path: Path, jupyter_path: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("INCEPTION_LAB_QUICK", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel's debugger warns about frozen modules
    nb = nbformat.read(path, as_version=4)
    files_before = sorted(NOTEBOOK_DIR.iterdir())
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, at the first error

    outputs = [o for cell in _code_cells(nb) for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert all(cell.execution_count is not None for cell in _code_cells(nb)), "a code cell did not run"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    # Running it leaves nothing behind next to the notebooks (what they write goes to temporary folders).
    assert sorted(NOTEBOOK_DIR.iterdir()) == files_before
