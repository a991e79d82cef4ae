"""torch.distributed as a branch, not a subsystem.

The same code runs with 1 or N processes. Under `torchrun` (WORLD_SIZE > 1) the process group is
initialised from the environment (gloo on CPU, NCCL on GPU), the model is wrapped in DDP, each
rank takes its slice of every global batch and of the evaluation data, metrics are reduced across
ranks, and only rank 0 logs and writes files. Without torchrun every helper here is a no-op.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist

from forgeml.distributed import (  # noqa: F401 (re-exported for the launcher's callers)
    all_gather,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    is_main,
    rank,
    world_size,
)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment; no-op without it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    world, this_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    # The rendezvous store outlives an elastic restart. Namespacing our keys by restart round
    # keeps a restarted rank from reading the address a dead rank published in the last round.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=this_rank == 0 and not agent_store,
        timeout=timedelta(minutes=5),
    )
    store = dist.PrefixStore(f"forgeml/round{restart_count()}", store)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=store, rank=this_rank, world_size=world)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def restart_count() -> int:
    """How often torchrun has restarted this job (elastic `--max-restarts`); 0 otherwise."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def launch(nproc: int, argv: list[str], *, max_restarts: int = 0) -> int:
    """Run `torchrun --nproc-per-node N -m forgeml ARGV` and return its exit code.

    Ranks report a bad input as one `error:` line and exit 2; torchrun would then bury it under
    its own traceback. Its stderr is held back and, on failure, reduced to the ranks' `error:`
    lines (once each) with exit code 2; any other failure is shown in full. SIGINT/SIGTERM are
    passed on to torchrun, which passes them to every rank (they checkpoint and stop).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "forgeml",
        *argv,
    ]
    sys.stdout.flush()
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as err:
        job = subprocess.Popen(command, stderr=err)
        forward = {sig: signal.signal(sig, lambda s, _f: job.send_signal(s)) for sig in SIGNALS}
        try:
            code = job.wait()
        finally:
            for sig, handler in forward.items():
                signal.signal(sig, handler)
        err.seek(0)
        text = err.read()
    errors = list(dict.fromkeys(line for line in text.splitlines() if line.startswith("error:")))
    if code != 0 and errors:
        print("\n".join(errors), file=sys.stderr)
        if any("stopped by SIGINT" in e for e in errors):
            return 130
        return 143 if any("stopped by SIGTERM" in e for e in errors) else 2
    # Success, or a failure without a rank's one-line error (a crash): show everything.
    sys.stderr.write(text)
    return code
