"""Shared test set-up: one torch thread, and the one place that decides what a test does when the
shared data sets (../shared/data, outside the repository) are missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Where the data sets are: the `shared/data` folder next to the checkout, unless this says else.
SHARED_DATA_ENV = "FORGEML_SHARED_DATA"
DEFAULT_SHARED_DATA = REPO.parent / "shared" / "data"
# CI has the data, so there a missing folder is a broken set-up: the tests fail instead of
# skipping. .ci/run sets this; CI=true (what CI services set) counts as well.
REQUIRE_ENV = "FORGEML_REQUIRE_SHARED_DATA"
# Every skip for missing shared data starts with this, so the end of the run can count them.
SKIP_PREFIX = "shared data missing:"


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    # Tiny models: one intra-op thread is faster than two competing on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def shared_data_required() -> bool:
    return _truthy(os.environ.get(REQUIRE_ENV)) or _truthy(os.environ.get("CI"))


@dataclass(frozen=True)
class SharedData:
    """The shared data folder; `path` hands out what is in it, or skips (locally) or fails (CI)
    the test that asked for something missing."""

    root: Path

    @property
    def is_default(self) -> bool:
        return self.root == DEFAULT_SHARED_DATA

    def path(self, relative: str) -> Path:
        found = self.root / relative
        if found.exists():
            return found
        why = f"{found} is not there"
        if shared_data_required():
            pytest.fail(
                f"{why}: the shared data sets are required here ({REQUIRE_ENV}=1 or CI=true); "
                f"put them in {self.root} or point {SHARED_DATA_ENV} at them",
                pytrace=False,
            )
        pytest.skip(f"{SKIP_PREFIX} {why}")

    def source_overrides(self, config: Path) -> list[str]:
        """Overrides that make a shipped config read its `../shared/data/...` source from
        `root`: none when `root` is where the config's relative path points anyway."""
        import yaml

        source = str(yaml.safe_load(config.read_text(encoding="utf-8"))["data"]["source"])
        prefix = "../shared/data/"
        if self.is_default or not source.startswith(prefix):
            return []
        return [f"data.source={self.path(source.removeprefix(prefix))}"]


@pytest.fixture(scope="session")
def shared_data() -> SharedData:
    return SharedData(Path(os.environ.get(SHARED_DATA_ENV) or DEFAULT_SHARED_DATA))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line at the end of a local run that skipped tests for want of the shared data."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and SKIP_PREFIX in report.longrepr[2]
    ]
    if skipped:
        root = os.environ.get(SHARED_DATA_ENV) or DEFAULT_SHARED_DATA
        terminalreporter.write_line(
            f"{len(skipped)} tests skipped: the shared data sets are not in {root} (set "
            f"{SHARED_DATA_ENV} to where they are; in CI, {REQUIRE_ENV}=1 makes this a failure)",
            yellow=True,
        )
