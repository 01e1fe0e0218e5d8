"""What code made a result: the package version, the git commit (and whether the tree was dirty) and a
fingerprint of the source that computes it, so that a sweep can tell old results from current ones.

>>> fingerprint = experiment_fingerprint(importlib.import_module("analysis.experiments.dead_units"))
>>> run_sweep(points, run_point, path, fingerprint=fingerprint)    # rows of other code: rerun, refuse or reuse

**What the fingerprint covers** (:func:`experiment_fingerprint`): the experiment's module, the modules of its own
package that it imports (transitively: for an experiment, ``runner``, ``verdict``, ``norm_variants``, ... as it
uses them) and :data:`TRAINING_CODE`, everything below the experiments in the layering (the zoo, the trainer, the
instruments, the data, the callbacks). The report, the CLI and the other experiments are not in it: editing them
leaves results current.

**What counts as an edit** (:func:`source_digest`): a module's syntax tree, without positions and without
docstrings. Comments, blank lines, line breaks, indentation inside brackets, quotes and docstrings do not change
the fingerprint; any change to code does (a constant, a name, an argument, an added statement), even one that
happens not to change a result.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

__all__ = [
    "DISTRIBUTION",
    "TRAINING_CODE",
    "Provenance",
    "code_fingerprint",
    "current_provenance",
    "experiment_fingerprint",
    "source_digest",
]

DISTRIBUTION = "inception-lab"

# The code every trained result runs through, below the experiments in the layering (packages stand for every
# module in them).
TRAINING_CODE: tuple[str, ...] = (
    "inception_models",
    "analysis.callbacks",
    "analysis.io",
    "analysis.data",
    "analysis.instruments",
    "analysis.training",
)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=1024)  # keyed by the text itself: an edited file is parsed again
def source_digest(source: str) -> str:
    """A sha256 of the source's syntax tree without positions and docstrings: formatting, comments and
    docstrings do not change it, code does."""
    tree = _strip_docstrings(ast.parse(source))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode("utf-8")).hexdigest()


def _module(code: ModuleType | str) -> ModuleType:
    return importlib.import_module(code) if isinstance(code, str) else code


def _source_files(code: ModuleType | str) -> dict[str, Path]:
    """``{module name: source file}`` of a module, or of every module in a package."""
    module = _module(code)
    file = getattr(module, "__file__", None)
    if file is None:
        raise ValueError(f"{module.__name__} has no source file to fingerprint")
    file = Path(file)
    if file.name != "__init__.py":
        return {module.__name__: file}
    files = {}
    for path in sorted(file.parent.rglob("*.py")):
        parts = path.relative_to(file.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join((module.__name__, *parts))] = path
    return files


def code_fingerprint(*code: ModuleType | str) -> str:
    """A 16-hex-digit fingerprint of the source of ``code`` (modules, packages or their dotted names; a package
    stands for all its modules): the digest of each module (:func:`source_digest`) and its name, in name order."""
    if not code:
        raise ValueError("code_fingerprint needs at least one module")
    files: dict[str, Path] = {}
    for item in code:
        files.update(_source_files(item))
    total = hashlib.sha256()
    for name in sorted(files):
        total.update(f"{name}\0{source_digest(files[name].read_text(encoding='utf-8'))}\n".encode("utf-8"))
    return total.hexdigest()[:16]


def _imported_modules(module: ModuleType) -> set[str]:
    """The modules that ``module``'s source imports (absolute names; relative imports resolved)."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    package = module.__package__ or ""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from package import module`
    return names


def _package_imports(module: ModuleType) -> list[ModuleType]:
    """``module`` and the modules of its own package it imports, transitively."""
    package = module.__package__ or module.__name__
    seen: dict[str, ModuleType] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        if current.__name__ in seen:
            continue
        seen[current.__name__] = current
        for name in _imported_modules(current):
            if name.startswith(package + ".") and name not in seen:
                try:
                    todo.append(importlib.import_module(name))
                except ImportError:  # `from package.module import name`: the name is not a module
                    continue
    return list(seen.values())


def experiment_fingerprint(module: ModuleType | str) -> str:
    """The fingerprint of the code behind an experiment's results: its module, the modules of its package it
    imports (transitively) and :data:`TRAINING_CODE` (see the module docstring)."""
    return code_fingerprint(*_package_imports(_module(module)), *TRAINING_CODE)


@dataclass(frozen=True)
class Provenance:
    """What made a result, stored on each of its rows as the ``code_*`` columns."""

    code_fingerprint: str | None
    code_version: str | None
    code_commit: str | None
    code_dirty: bool | None

    def columns(self) -> dict[str, str | bool | None]:
        return asdict(self)

    def describe(self) -> str:
        """``fingerprint 1a2b3c4d5e6f7a8b, inception-lab 0.1.0, commit 0123abc (dirty)``."""
        commit = "no git commit" if self.code_commit is None else f"commit {self.code_commit[:7]}"
        if self.code_dirty:
            commit += " (dirty)"
        fingerprint = "no fingerprint" if self.code_fingerprint is None else f"fingerprint {self.code_fingerprint}"
        version = f"{DISTRIBUTION} {self.code_version}" if self.code_version else f"{DISTRIBUTION} not installed"
        return f"{fingerprint}, {version}, {commit}"


@functools.lru_cache(maxsize=1)
def _version() -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    here = Path(sys.modules[__name__].__file__).parent
    try:
        done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


@functools.lru_cache(maxsize=1)
def _commit() -> tuple[str | None, bool | None]:
    """The checkout's commit and whether a tracked file differs from it (untracked files do not count)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else bool(status)


def current_provenance(fingerprint: str | None = None) -> Provenance:
    """This process's code: ``fingerprint`` as given, the installed version and the git checkout of the package
    (read once per process)."""
    commit, dirty = _commit()
    return Provenance(fingerprint, _version(), commit, dirty)
