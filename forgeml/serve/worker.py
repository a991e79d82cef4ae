"""`Worker`: one served model's queue and thread, the part the batcher and the scheduler share.

All torch work of a model happens on its worker thread: it loads the run directory, runs one
warm-up, then serves its queue until closed. Request handlers on the event loop announce a
request as soon as its body starts to arrive (`expect`), and queue its jobs once it is parsed; a
worker gathering a batch waits, at most `max_delay_s`, only for requests already announced --
never for company that is not coming, so a lone request runs at once.

`Batcher` (kserve/batcher.py: one forward for many requests) and `Scheduler`
(openai/scheduler.py: token-by-token generation for many requests) build on this: the one
deliberate base class in the server, one level deep.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol


class QueueFull(Exception):
    """The model's queue holds `max_queue` requests: the client should retry later (429)."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new work (503)."""


def refusal(exc: QueueFull | ShuttingDown, name: str, waiting: str) -> tuple[int, str, str]:
    """(HTTP status, metrics reason, message) for a request a worker would not queue;
    `waiting` says what fills the queue ("256 requests", "256 choices")."""
    if isinstance(exc, QueueFull):
        message = (
            f"model '{name}' has {waiting} waiting (--max-queue); retry after the Retry-After delay"
        )
        return 429, "queue_full", message
    return 503, "shutting_down", "the server is shutting down"


class WorkerMetrics(Protocol):
    def observe_batch(self, model: str, rows: int, requests: int, seconds: float) -> None: ...
    def set_queue_depth(self, model: str, depth: int) -> None: ...


class Worker:
    """The queue and thread of one model; subclasses implement `serve()`. `start()` loads it.

    Args:
        model: the served run (`load()`, `warmup()`, `name`), as its task's `served` gives it.
        max_batch_size: rows (or generated choices) taken together at most.
        max_delay_s: how long gathering a batch waits for announced requests.
        max_queue: queued jobs at most; more is `QueueFull`.
        metrics: where queue depths and batch sizes go (ServeMetrics).
        on_loaded: called on the worker thread as `on_loaded(worker, error)` once the model
            loaded (error None) or failed to (the worker then stops).
    """

    thread_prefix = "forgeml-serve"

    def __init__(
        self,
        model: Any,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        metrics: Any = None,
        on_loaded: Callable[[Any, BaseException | None], None] | None = None,
    ) -> None:
        self.model, self.metrics, self.on_loaded = model, metrics, on_loaded
        self.max_batch_size, self.max_delay_s = max_batch_size, max_delay_s
        self.max_queue = max_queue
        self.ready = False  # loaded and warmed up
        self._queue: deque[Any] = deque()
        self._expected = 0  # requests announced by `expect()` and not yet queued or withdrawn
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, name=f"{self.thread_prefix}-{model.name}", daemon=True
        )

    @property
    def name(self) -> str:
        return self.model.name

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float) -> None:
        """Take no new jobs, finish the queued ones, stop the thread (waits up to `timeout_s`)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------------ event loop side

    def expect(self) -> None:
        """A request for this model is on its way (its body is being read and parsed): a batch
        being gathered waits for it, up to `max_delay_s`. Pair with a submit that says
        `expected=True` or, if the request fails before that, `unexpect()`."""
        with self._cond:
            self._expected += 1

    def unexpect(self) -> None:
        """An announced request will not come (it failed before it was submitted)."""
        with self._cond:
            self._expected -= 1
            self._cond.notify()

    def _enqueue(self, jobs: list[Any], *, expected: bool) -> None:
        """Queue all of `jobs` or none (holding no lock; takes it).

        Raises:
            ShuttingDown: the server is stopping.
            QueueFull: they do not fit in `max_queue`.
        """
        with self._cond:
            if expected:
                self._expected -= 1
                self._cond.notify()
            if self._closing:
                raise ShuttingDown
            if len(self._queue) + len(jobs) > self.max_queue:
                raise QueueFull
            self._queue.extend(jobs)
            depth = len(self._queue)
            self._cond.notify()
        self._report_depth(depth)

    def _report_depth(self, depth: int) -> None:
        if self.metrics is not None:
            self.metrics.set_queue_depth(self.name, depth)

    # ------------------------------------------------------------------------ worker side

    def _run(self) -> None:
        try:
            self.model.load()
            self.model.warmup()
        except BaseException as exc:  # a broken run directory: the server must not serve it
            with self._cond:
                self._closing = True
            if self.on_loaded is not None:
                self.on_loaded(self, exc)
            return
        self.ready = True
        if self.on_loaded is not None:
            self.on_loaded(self, None)
        self.serve()

    def serve(self) -> None:
        """Work the queue until closed (the subclass's loop)."""
        raise NotImplementedError

    def _wait_for_job(self) -> bool:
        """Holding the lock: wait until a job is queued; False: closing with nothing left."""
        while not self._queue and not self._closing:
            self._cond.wait()
        return bool(self._queue)

    def _gather(self, done: Callable[[], bool]) -> None:
        """Holding the lock: until `done()` (it may take queued jobs), wait up to `max_delay_s`
        for requests already on their way, never for requests that are not coming."""
        deadline = time.monotonic() + self.max_delay_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing or self._expected <= 0:
                return
            self._cond.wait(remaining)
