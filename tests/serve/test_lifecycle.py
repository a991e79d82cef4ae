"""Start-up (ready only once loaded), SIGTERM (requests in flight finish, exit 0), and the
command's errors (one `error:` line, exit 2)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_helpers import (
    DRAINING,
    TABULAR_ROWS,
    WAIT_TIMEOUT_S,
    Runs,
    Servers,
    metric,
    slow_post,
    wait_for,
)

from forgeml.cli.serve import main


def test_ready_only_after_loading_and_sigterm_drains_requests_in_flight(servers: Servers) -> None:
    server = servers.gated  # its models load once the gate file exists (faulty_server.py)
    url = server.url
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    ready = httpx.get(f"{url}/v2/health/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert ready.headers["retry-after"] == "1"
    assert httpx.get(f"{url}/v2/models/tabular/ready").json() == {"name": "tabular", "ready": False}
    r = httpx.post(f"{url}/v1/models/tabular:predict", json={"instances": TABULAR_ROWS})
    assert r.status_code == 503 and "loading" in r.json()["error"]
    assert httpx.get(f"{url}/v2/models/tabular").status_code == 503
    servers.gate.touch()
    server.wait_ready()
    assert httpx.get(f"{url}/v2/models/tabular/ready").status_code == 200

    # Six requests are in flight, their bodies still arriving (stalled until released); SIGTERM
    # arrives while they are: each is still read, run and answered.
    release = threading.Event()

    def post(_: int) -> tuple[int, dict]:
        body = {"instances": TABULAR_ROWS}
        return slow_post(url, "/v1/models/tabular:predict", body, release)

    with ThreadPoolExecutor(6) as pool:
        try:
            futures = [pool.submit(post, i) for i in range(6)]
            # the six, and the /metrics request that counts them
            wait_for(lambda: in_flight(url) >= 7, "six stalled requests in flight")
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for_log(DRAINING)  # the server drains: now send the rest
            assert not any(f.done() for f in futures)
        finally:
            release.set()
        responses = [f.result() for f in futures]
    assert [status for status, _ in responses] == [200] * 6, responses
    assert all(len(r["predictions"]) == len(TABULAR_ROWS) for _, r in responses)
    assert server.proc.wait(WAIT_TIMEOUT_S) == 0, server.log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/health/live")


def in_flight(url: str) -> float:
    return metric(url, "forgeml_requests_in_flight")


def test_a_run_that_fails_to_load_stops_the_server_with_exit_2(servers: Servers) -> None:
    server = servers.broken  # one flipped bit in model.safetensors
    assert server.proc.wait(60) == 2
    errors = [line for line in server.log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "sha256" in errors[0], server.log


def test_command_errors_are_one_line_and_exit_2(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path)], "not a finished forgeml run"),
        ([str(runs.tabular), str(runs.tabular)], "would both be served as model 'tabular'"),
        ([str(runs.tabular), "--max-batch-size", "0"], "--max-batch-size 0"),
        ([str(runs.tabular), "--timeout-s", "-1"], "--timeout-s"),
        ([str(runs.tabular), "--api-key", ""], "--api-key"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_the_core_cli_part_imports_no_web_framework() -> None:
    code = (
        "import sys, argparse; import forgeml.cli.serve as c; "
        "p = argparse.ArgumentParser(); c.add_serve_parser(p.add_subparsers()); "
        "assert not {'fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'torch'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
