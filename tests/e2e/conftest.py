"""Shared helpers for end-to-end tests: run the real `forgeml` CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT_S = 180


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Cli:
    """`python -m forgeml ARGS` in a working directory, one call or several at once.

    Each call pays ~2 s of imports (torch), so independent calls are run in parallel threads,
    each one still a real subprocess of the real CLI.
    """

    def run(self, cwd: Path, *args: str) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "forgeml", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        return CliResult(tuple(args), proc.returncode, proc.stdout, proc.stderr)

    def run_many(self, calls: list[tuple[Path, list[str]]]) -> list[CliResult]:
        workers = max(2, (os.cpu_count() or 2) + 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda call: self.run(call[0], *call[1]), calls))


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()
