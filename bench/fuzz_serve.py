"""Property-based fuzzing of `forgeml serve` at length: the suite's Hypothesis strategies
(tests/serve/fuzz_requests.py), many more examples and a fresh seed each run.

Trains the suite's tiny runs (tabular, digits, reviews, regression, tags, waves, and a tiny
character-level GPT) into a temporary directory, starts two real servers on 127.0.0.1 (every
classifier run with 256 KB bodies, as the suite's main server; the GPT with a classifier and
--max-tokens 24), and sends each its examples: OIP v2 infer and :predict bodies to the first,
completions and chat bodies to the second. Every answer must be a 2xx, or a 4xx with a one-line
JSON error (naming the field for a 422); never a 5xx, never a dropped connection. Prints the
status codes counted per family of routes and every request that broke the rule, and exits 1 if
one did. One request at a time, a new connection each, so each answer is the request's own.

    .venv/bin/python bench/fuzz_serve.py [--examples 10000] [--lm-examples 4000] [--seed N]
"""

from __future__ import annotations

import argparse
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

import hypothesis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "serve"))

import fuzz_requests  # noqa: E402
from serve_helpers import LM, ServerProcess, stop_all, train_lm, train_runs  # noqa: E402

COLUMNS = ["2xx", "400", "404", "413", "415", "422", "other 4xx", "5xx", "no answer"]


def fuzz(url: str, paths: list[str], lm: str | None, examples: int, seed: int) -> tuple:
    """(status counts, [(request, problem)], seconds) of up to `examples` requests."""
    counts: Counter[int | None] = Counter()
    problems: list[tuple[fuzz_requests.Request, str]] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.generate],  # no shrinking: every problem is kept as it came
    )
    @given(request=fuzz_requests.requests(paths, lm))
    def send(request: fuzz_requests.Request) -> None:
        status, problem = fuzz_requests.problem(client, request)
        counts[status] += 1
        if problem is not None:
            problems.append((request, problem))

    started = time.perf_counter()
    with fuzz_requests.client(url) as client:
        send()
    return counts, problems, time.perf_counter() - started


def row(name: str, counts: Counter, seconds: float) -> str:
    def column(label: str) -> int:
        if label == "2xx":
            return sum(n for s, n in counts.items() if s is not None and 200 <= s < 300)
        if label == "other 4xx":
            named = {400, 404, 413, 415, 422}
            return sum(n for s, n in counts.items() if s and 400 <= s < 500 and s not in named)
        if label == "5xx":
            return sum(n for s, n in counts.items() if s is not None and s >= 500)
        if label == "no answer":
            return counts.get(None, 0)
        return counts.get(int(label), 0)

    cells = [f"{column(label):,}" for label in COLUMNS]
    return f"| {name} | {sum(counts.values()):,} | " + " | ".join(cells) + f" | {seconds:.0f} |"


def cpu_name() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    return names[0] if names else "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="OIP and :predict requests")
    parser.add_argument("--lm-examples", type=int, default=4_000, help="OpenAI-route requests")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    with tempfile.TemporaryDirectory(prefix="fuzz-serve-") as tmp:
        out = Path(tmp)
        print("training the tiny runs ...", file=sys.stderr)
        runs = train_runs(out)
        lm = train_lm(out)
        main_server = ServerProcess(
            out / "main.log", [*map(str, vars(runs).values()), "--max-body-bytes", "262144"]
        )
        lm_server = ServerProcess(
            out / "lm.log", [str(lm), str(runs.tabular), "--max-tokens", "24"]
        )
        try:
            urls = main_server.wait_ready(), lm_server.wait_ready()
            print(f"fuzzing with seed {seed} ...", file=sys.stderr)
            kserve = fuzz(urls[0], fuzz_requests.KSERVE_PATHS, None, args.examples, seed)
            openai = fuzz(urls[1], fuzz_requests.OPENAI_PATHS, LM, args.lm_examples, seed)
        finally:
            codes = stop_all([main_server, lm_server])
        logs = {name: s.log for name, s in (("main", main_server), ("lm", lm_server))}
    print(
        f"\n{cpu_name()}, {torch.get_num_threads()} torch threads in this process; "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"hypothesis {hypothesis.__version__}; {date.today()}; seed {seed}; server exit codes "
        f"{codes}\n"
    )
    print("| routes | requests | " + " | ".join(COLUMNS) + " | seconds |")
    print("|---|" + "---|" * (len(COLUMNS) + 2))
    print(row("OIP v2 infer, :predict (6 classifier runs)", kserve[0], kserve[2]))
    print(row("completions, chat completions (tiny GPT)", openai[0], openai[2]))
    problems = kserve[1] + openai[1]
    for request, problem in problems[:20]:
        print(f"\nPROBLEM {problem}\n  {request!r}")
    for name, log in logs.items():
        if "Traceback" in log:
            # what the tracebacks ended in, and the first one whole
            raised = Counter(re.findall(r"^([\w.]+(?:Error|Exception)): ", log, re.MULTILINE))
            print(f"\n{name} server log, exceptions: {dict(raised)}")
            print(log[log.index("Traceback") :][:3000])
    return 1 if problems or any(code != 0 for code in codes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
