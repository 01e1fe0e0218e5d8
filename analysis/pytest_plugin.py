"""pytest plugin: ``pytest --param-budgets FILE`` turns every budget of FILE into a test item.

Registered through the ``pytest11`` entry point, so installing inception-lab is enough. A failing item's
message names each overshoot (block, metric, actual, limit, percentage).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("inception-lab")
    group.addoption("--param-budgets", action="store", default=None, metavar="FILE",
                    help="check the parameter/MAC budgets in FILE (TOML), one test item per budget")


class BudgetExceeded(AssertionError):
    pass


class BudgetItem(pytest.Item):
    def __init__(self, *, budget, **kwargs) -> None:
        super().__init__(**kwargs)
        self.budget = budget

    def runtest(self) -> None:
        from analysis.instruments.budgets import check_budget, overshoot_message

        rows = check_budget(self.budget)
        if not rows["ok"].all():
            raise BudgetExceeded(f"{self.budget.model} is over budget:\n{overshoot_message(rows)}")

    def repr_failure(self, excinfo, style=None):  # noqa: ANN001
        # An overshoot or a budget naming something the model lacks is a finding, not a crash: no traceback.
        if isinstance(excinfo.value, (BudgetExceeded, ValueError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):  # noqa: ANN201
        return self.path, None, f"budget {self.budget.label}"


class BudgetFile(pytest.File):
    def collect(self):  # noqa: ANN201
        from analysis.instruments.budgets import load_budgets

        for budget in load_budgets(self.path):
            yield BudgetItem.from_parent(self, name=budget.label, budget=budget)


def pytest_collect_file(file_path: Path, parent: pytest.Collector):  # noqa: ANN201
    option = parent.config.getoption("--param-budgets")
    if option and file_path.resolve() == Path(option).resolve():
        return BudgetFile.from_parent(parent, path=file_path)
    return None


def pytest_configure(config: pytest.Config) -> None:
    option = config.getoption("--param-budgets")
    if option:
        path = Path(option)
        if not path.is_file():
            raise pytest.UsageError(f"--param-budgets: {path} not found")
        # The budget file is collected like a test file, even when it lies outside the test paths.
        if str(path) not in config.args and str(path.resolve()) not in config.args:
            config.args.append(str(path))
