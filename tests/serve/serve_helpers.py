"""Helpers of the serve tests: tiny runs, server subprocesses, inputs (fixtures: conftest.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import forgeml

START_TIMEOUT_S = 60
WAIT_TIMEOUT_S = 60  # for something a test waits on to happen; generous: the machine may be busy
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
FAULTY_SERVER = Path(__file__).with_name("faulty_server.py")
# uvicorn logs this once a SIGTERM has stopped it accepting and it waits for the requests in
# flight: the moment to let a stalled request go on.
DRAINING = "Waiting for connections to close"


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    """Poll `condition` until it holds; fail naming `what` never happened."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:g} s"
        time.sleep(0.01)


def metric(url: str, name: str, headers: dict | None = None, **labels: str) -> float:
    """The sum of the samples `name` with `labels` on the server's /metrics (0 if none)."""
    text = httpx.get(f"{url}/metrics", headers=headers).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Runs:
    tabular: Path  # numeric age, income + category color -> yes/no (binary)
    digits: Path  # 8x8 grayscale images -> 0..9 (multiclass, integer classes)
    reviews: Path  # text -> pos/neg
    regression: Path  # numeric x0..x2 -> y
    tags: Path  # numeric x0, x1 -> any of the labels a, b (multi-label)
    waves: Path  # a variable-length 1-D signal (a sequence column) -> its shape


def tags_csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = ["x0,x1,tags"]
    for x0, x1 in rng.normal(size=(150, 2)):
        tags = [t for t, on in (("a", x0 > 0), ("b", x1 > 0)) if on]
        cell = json.dumps(tags).replace('"', '""')  # a JSON array in a CSV cell
        lines.append(f'{x0:.3f},{x1:.3f},"{cell}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train(out: Path, name: str, data: dict, model: dict, epochs: int = 1) -> Path:
    config = {
        "seed": 0,
        "data": data,
        "model": model,
        "train": {"batch_size": 64, "max_epochs": epochs, "precision": "fp32"},
        "output": {"dir": str(out), "name": name},
    }
    return forgeml.train(config, quiet=True).dir


def train_runs(out: Path) -> Runs:
    """The tiny runs of the main server (conftest.py; bench/fuzz_serve.py), trained into `out`."""
    text = reviews_csv(out / "reviews.csv")
    return Runs(
        tabular=train(
            out,
            "tabular",
            {"source": "builtin:tabular?n=300", "target": "label"},
            {"name": "mlp", "hidden_sizes": [8]},
            epochs=2,
        ),
        digits=train(
            out,
            "digits",
            {"source": "builtin:digits", "target": "label"},
            {"name": "cnn", "channels": [4], "head_hidden": [8]},
        ),
        reviews=train(
            out,
            "reviews",
            {"source": str(text), "target": "sentiment", "columns": {"review": {"type": "text"}}},
            {"name": "rnn", "cell": "gru", "hidden_size": 8, "embedding_dim": 8},
        ),
        regression=train(
            out,
            "regression",
            {"source": "builtin:regression?n=200&features=3", "target": "y"},
            {"name": "mlp", "hidden_sizes": [8]},
        ),
        tags=train(
            out,
            "tags",
            {"source": str(tags_csv(out / "tags.csv")), "target": "tags"},
            {"name": "mlp", "hidden_sizes": [8]},
        ),
        waves=train(
            out,
            "waves",
            {"source": "builtin:waves?n=90&length=16", "target": "label"},
            {"name": "cnn", "channels": [4], "head_hidden": [8]},
        ),
    )


LM = "tinylm"
LM_CONTEXT = 32
LM_SENTENCES = [
    "system: answer briefly.\nuser: hello there, how are you?\nassistant: fine, thanks.\n",
    "user: what is the weather like today?\nassistant: it is sunny and warm.\n",
    "the quick brown fox jumps over the lazy dog. 0123456789\n",
]


def train_lm(out: Path) -> Path:
    """A tiny character-level GPT (2 layers, 32 dims, context 32, 30 steps) named `LM`."""
    rng = random.Random(0)
    corpus = out / "corpus.txt"
    corpus.write_text("".join(rng.choice(LM_SENTENCES) for _ in range(300)), encoding="utf-8")
    config = {
        "seed": 0,
        "data": {
            "source": str(corpus),
            "corpus": {"tokenizer": "char", "eval_blocks": 8, "sample_tokens": 0},
        },
        "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": LM_CONTEXT},
        "train": {"batch_size": 8, "max_steps": 30, "precision": "fp32"},
        "output": {"dir": str(out), "name": LM},
    }
    return forgeml.train(config, quiet=True).dir


def reviews_csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = {"pos": ["great", "good", "love", "fine"], "neg": ["bad", "awful", "hate", "poor"]}
    lines = ["review,sentiment"]
    for i in range(120):
        label = "pos" if i % 2 else "neg"
        vocab = words[label] + ["the", "phone", "is"]
        lines.append(" ".join(rng.choice(vocab, size=rng.integers(3, 9))) + f",{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- servers


class ServerProcess:
    """One `python -m forgeml.cli.serve ... --port 0` subprocess, its log in a file.

    `faults`: options of faulty_server.py (e.g. ["--load-gate", PATH]); the server then starts
    through it, the same server with those faults injected."""

    def __init__(
        self,
        log: Path,
        args: list[str],
        env: dict[str, str] | None = None,
        faults: list[str] | None = None,
    ) -> None:
        self.log_path = log
        self.args = args
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        if faults is None:
            command = [sys.executable, "-m", "forgeml.cli.serve"]
        else:
            command = [sys.executable, str(FAULTY_SERVER), *faults, "--"]
        # The log goes to a file: a pipe nobody reads would block the server once full.
        with open(log, "wb") as sink:
            self.proc = subprocess.Popen(
                [*command, *args, "--port", "0"],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**environment, **(env or {})},
            )
        self._url: str | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def url(self) -> str:
        """The base URL, once the server listens (waits for it)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._url is None:
            found = LISTENING.search(self.log)
            if found:
                self._url = f"http://127.0.0.1:{found.group(1)}"
            elif self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
            elif time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{self.log}")
            else:
                time.sleep(0.05)
        return self._url

    def wait_ready(self, headers: dict[str, str] | None = None) -> str:
        url = self.url
        deadline = time.monotonic() + START_TIMEOUT_S
        while httpx.get(f"{url}/v2/health/ready", headers=headers).status_code != 200:
            assert self.proc.poll() is None, self.log
            assert time.monotonic() < deadline, f"server not ready:\n{self.log}"
            time.sleep(0.05)
        return url

    def log_count(self, text: str) -> int:
        return self.log.count(text)

    def wait_for_log(self, text: str, count: int = 1) -> None:
        """Wait until `text` is in the log `count` times (the server must stay up)."""

        def seen() -> bool:
            assert self.proc.poll() is None, f"server exited waiting for {text!r}:\n{self.log}"
            return self.log_count(text) >= count

        wait_for(seen, f"log line {text!r} (x{count})")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_stopped()

    def wait_stopped(self) -> int:
        """The exit code once it has stopped (killed after 30 s)."""
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode


API_KEY = "test-key-0123456789"


@dataclass
class Servers:
    main: ServerProcess  # every run, default batching, 256 KB bodies
    slow: ServerProcess  # tabular; API key; batches wait 10 s for 8 rows; 3 s time limit
    limits: ServerProcess  # digits; queue of 2, no batching; held while `limits_hold` exists
    gated: ServerProcess  # tabular; loads once `gate` exists (faulty_server.py); batch delay 1 s
    broken: ServerProcess  # a run whose weights do not match their sha256: exits 2
    gate: Path
    limits_hold: Path


def stop_all(servers: list[ServerProcess]) -> list[int]:
    """SIGTERM to every server at once, then their exit codes. One SIGTERM each: a second one,
    once the server has put back the default handler on its way out, would kill it (-15)."""
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
    return [server.wait_stopped() for server in servers]


# --------------------------------------------------------------------------- inputs


def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def digit_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """n (8, 8) uint8 digit images from the built-in set."""
    from forgeml.data.builtins import read_builtin

    images = read_builtin("builtin:digits").columns["image"]
    rng = np.random.default_rng(seed)
    return [images[i] for i in rng.choice(len(images), size=n, replace=False)]


TABULAR_ROWS = [
    {"age": 30.0, "income": 40000.0, "color": "red"},
    {"age": 71.0, "income": 12000.0, "color": "blue"},
    {"age": 45.0, "income": 95000.0, "color": "green"},
    {"age": 18.0, "income": 31000.0, "color": "purple"},  # an unknown category is fine
]
REVIEWS = ["great phone, love it", "awful and broken", "the phone is fine", "zzz unseen words"]


def broken_run(run: Path, copy: Path) -> Path:
    """A copy of `run` with one bit of its weights flipped (the sha256 check must catch it)."""
    shutil.copytree(run, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    return copy


# --------------------------------------------------------------------------- slow clients


def slow_post(
    url: str, path: str, body: dict, release: threading.Event, headers: dict | None = None
) -> tuple[int, dict]:
    """POST `body` over a raw socket, stalling after the first half of it until `release` is
    set: the server has entered the route (the request is on its way) but cannot parse it yet.
    (status, JSON)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    data = json.dumps(body).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data[: len(data) // 2])
        assert release.wait(WAIT_TIMEOUT_S), "the test never released a stalled request body"
        sock.sendall(data[len(data) // 2 :])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload)
