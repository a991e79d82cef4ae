"""`forgeml serve` with faults injected from the tests' side: the real server, a slower world.

    python tests/serve/faulty_server.py [--load-gate PATH] [--hold PATH] -- SERVE_ARGS...

patches what the server calls and then runs the normal entry point, `forgeml.cli.serve.main`:

--load-gate PATH   every model's `load()` first waits until PATH exists (or the server stops),
                   so a test can observe the server live but not ready, and decide when
                   loading starts.
--hold PATH        while PATH exists, a classifier's forward pass waits before it starts, and a
                   language model's text stream before its next step once it has given out
                   some text (so a client always has its first chunk): requests stay in
                   flight, queued behind it, for as long as the test wants. Each wait prints
                   one line "faulty_server: held (N)" to stderr, N counting from 1, so a test
                   can wait for "the model is held now".

The product has no test hooks: the faults live here, around its public methods. Every wait is
bounded (WAIT_LIMIT_S), after which the server carries on, so a forgotten file cannot hang it.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

WAIT_LIMIT_S = 300.0
POLL_S = 0.01
HELD = "faulty_server: held"


def wait_while(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while condition():
        if time.monotonic() > deadline:
            print(f"faulty_server: gave up waiting for {what}", file=sys.stderr, flush=True)
            return
        time.sleep(POLL_S)


def gate_loading(gate: str) -> None:
    from forgeml.serve.kserve.batcher import Batcher
    from forgeml.serve.openai.scheduler import Scheduler
    from forgeml.tasks.language_modeling.serving import ServedLM
    from forgeml.tasks.table.serving import ServedModel

    # A server stopped before its gate opened (its test did not run) stops at once, as one
    # whose models load quickly: closing a model's worker opens the gate.
    stopping = threading.Event()

    def gated(load: Callable[[Any], None]) -> Callable[[Any], None]:
        @functools.wraps(load)
        def wrapper(self: Any) -> None:
            wait_while(
                lambda: not os.path.exists(gate) and not stopping.is_set(), f"{gate} to exist"
            )
            load(self)

        return wrapper

    def closing(close: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(close)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            stopping.set()
            close(self, *args, **kwargs)

        return wrapper

    for cls in (ServedModel, ServedLM):
        cls.load = gated(cls.load)  # type: ignore[method-assign]
    for cls in (Batcher, Scheduler):
        cls.close = closing(cls.close)  # type: ignore[method-assign]


def hold_models(hold: str) -> None:
    from forgeml.generation.language_model import TextStream
    from forgeml.tasks.table.serving import ServedModel

    counter = itertools.count(1)
    lock = threading.Lock()

    def held() -> None:
        if os.path.exists(hold):
            with lock:
                n = next(counter)
            print(f"{HELD} ({n})", file=sys.stderr, flush=True)
            wait_while(lambda: os.path.exists(hold), f"{hold} to be removed")

    forward = ServedModel.forward

    @functools.wraps(forward)
    def held_forward(self: Any, inputs: Any) -> Any:
        held()
        return forward(self, inputs)

    steps = TextStream.__iter__

    def held_iter(self: Any) -> Iterator[list[str]]:
        shown = False
        for pieces in steps(self):
            yield pieces
            # Runs when the scheduler asks for the next step: the pieces above were delivered.
            shown = shown or any(pieces)
            if shown:
                held()

    ServedModel.forward = held_forward  # type: ignore[method-assign]
    TextStream.__iter__ = held_iter  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="faulty_server.py")
    parser.add_argument("--load-gate", metavar="PATH")
    parser.add_argument("--hold", metavar="PATH")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then forgeml serve's")
    args = parser.parse_args(argv)
    serve_args = args.serve_args[1:] if args.serve_args[:1] == ["--"] else args.serve_args
    if args.load_gate:
        gate_loading(args.load_gate)
    if args.hold:
        hold_models(args.hold)
    from forgeml.cli.serve import main as serve

    return serve(serve_args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
