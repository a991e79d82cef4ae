"""Real servers for the serve tests: `python -m forgeml.cli.serve` subprocesses on free ports.

Tiny runs are trained once per session. The long-lived servers start together (each import of
torch takes seconds; in parallel they overlap) and every test waits only for the one it uses.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_helpers import (
    API_KEY,
    Runs,
    ServerProcess,
    Servers,
    broken_run,
    stop_all,
    train_runs,
)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return train_runs(tmp_path_factory.mktemp("serve-runs"))


@pytest.fixture(scope="session")
def servers(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    logs = tmp_path_factory.mktemp("serve-logs")
    all_runs = [str(path) for path in vars(runs).values()]
    started = Servers(
        main=ServerProcess(logs / "main.log", [*all_runs, "--max-body-bytes", "262144"]),
        # A batch would wait 10 s for requests on their way, longer than any request may take
        # (3 s): waiting for company that is not coming shows up as a 504, never as "slow".
        slow=ServerProcess(
            logs / "slow.log",
            [str(runs.tabular), "--max-delay-ms", "10000", "--max-batch-size", "8"]
            + ["--timeout-s", "3"],
            env={"FORGEML_API_KEY": API_KEY},
        ),
        limits=ServerProcess(
            logs / "limits.log",
            [str(runs.digits), "--max-queue", "2", "--no-batching"],
            faults=["--hold", str(logs / "limits-hold")],
        ),
        gated=ServerProcess(
            logs / "gated.log",
            [str(runs.tabular), "--max-delay-ms", "1000", "--max-batch-size", "64"],
            faults=["--load-gate", str(logs / "gate")],
        ),
        broken=ServerProcess(logs / "broken.log", [str(broken_run(runs.tabular, logs / "broken"))]),
        gate=logs / "gate",
        limits_hold=logs / "limits-hold",
    )
    yield started
    stop_all([s for s in vars(started).values() if isinstance(s, ServerProcess)])


@pytest.fixture(scope="session")
def main_url(servers: Servers) -> str:
    return servers.main.wait_ready()
