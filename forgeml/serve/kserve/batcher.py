"""Dynamic batching: one worker thread per model merges concurrent requests into one forward.

Request handlers (on the event loop) put a `Job` into the model's bounded queue and await an
asyncio future. The worker thread takes the first job and every job queued behind it, up to
`max_batch_size` rows; it waits (at most `max_delay_s` after the first job) only for requests
that are already on their way -- announced with `expect()` when their body started to arrive,
not yet queued. So a lone request never waits for company that is not coming (latency as
without batching), and under load the requests being read and parsed join the batch:

    encode each job's records (a bad one fails alone, 422)  ->  merge the tensors  ->
    one forward  ->  split the outputs by job  ->  decode  ->  resolve each job's future

All torch work of a model happens on its worker thread, so the event loop only parses and
answers, and the model's preprocessing state is never shared between threads. A full queue is
`QueueFull` (429); a job whose request timed out is dropped before it is run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from forgeml.errors import ForgeError
from forgeml.serve.errors import RequestError
from forgeml.serve.kserve.codec import Locate, data_error_field
from forgeml.serve.worker import Worker, WorkerMetrics
from forgeml.tasks.table.serving import ServedModel

log = logging.getLogger("forgeml.serve")
SOURCE = "request"  # preprocessing errors read "request, record 3, column 'age': ..."


class BatchMetrics(WorkerMetrics, Protocol):
    def add_truncated(self, model: str, column: str, rows: int) -> None: ...


@dataclass(eq=False)
class Job:
    records: list[dict[str, Any]]
    locate: Locate  # (row, column or "") -> the request field, for error messages
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    abandoned: bool = field(default=False)  # set on the loop when the request gave up

    @property
    def rows(self) -> int:
        return len(self.records)


class Batcher(Worker):
    """The queue and worker thread of one table model. `start()` loads it (on the worker).

    `batching=False` (`--no-batching`): one request per forward, no waiting.
    """

    def __init__(self, model: ServedModel, *, batching: bool = True, **options: Any) -> None:
        super().__init__(model, **options)
        self.merge = batching  # merge concurrent requests into one forward

    # ------------------------------------------------------------------------ event loop side

    async def submit(
        self,
        records: list[dict[str, Any]],
        locate: Locate,
        timeout_s: float,
        *,
        expected: bool = False,
    ) -> list[dict[str, Any]]:
        """Predictions for `records` (as `Predictor.predict` returns them). `expected`: this
        request was announced with `expect()` (it is no longer on its way, queued or not).

        Raises:
            QueueFull, ShuttingDown: not queued.
            TimeoutError: no answer within `timeout_s`; the job is dropped if not yet started.
            RequestError: a bad value found by the run's preprocessing (422).
        """
        loop = asyncio.get_running_loop()
        job = Job(records, locate, loop, loop.create_future())
        self._enqueue([job], expected=expected)
        try:
            return await asyncio.wait_for(job.future, timeout_s)
        finally:
            if not job.future.done() or job.future.cancelled():
                job.abandoned = True  # timed out or cancelled: the worker skips it
                self._withdraw(job)

    def _withdraw(self, job: Job) -> None:
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # already taken by the worker
            depth = len(self._queue)
        self._report_depth(depth)

    # ------------------------------------------------------------------------ worker side

    def serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run_batch(batch)
            except Exception as exc:  # a bug: fail this batch, keep serving
                log.exception("model %s: batch failed", self.name)
                for job in batch:
                    _settle(job, error=exc)

    def _next_batch(self) -> list[Job] | None:
        """Wait for a job, then take the queued ones up to the row budget, waiting for announced
        requests until the delay has passed; None: closed."""
        with self._cond:
            if not self._wait_for_job():
                return None  # closing, and every queued job has been run
            batch = [self._queue.popleft()]
            rows = batch[0].rows

            def full() -> bool:  # take what is queued and fits; True: the batch is complete
                nonlocal rows
                while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
                    job = self._queue.popleft()
                    batch.append(job)
                    rows += job.rows
                return rows >= self.max_batch_size or bool(self._queue)  # the next job waits

            if self.merge:
                self._gather(full)
            depth = len(self._queue)
        self._report_depth(depth)
        return batch

    def _run_batch(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        encoded: list[tuple[Job, dict[str, torch.Tensor]]] = []
        for job in batch:
            if job.abandoned:
                continue
            try:
                encoded.append((job, self.model.encode(job.records, SOURCE)))
                if self.metrics is not None:  # cut, never silently: counted per column
                    for column, rows in self.model.last_truncated.items():
                        self.metrics.add_truncated(self.name, column, rows)
            except ForgeError as exc:  # a bad value in this request only
                message = " ".join(str(exc).split())
                _settle(
                    job, error=RequestError(422, message, data_error_field(message, job.locate))
                )
        if not encoded:
            return
        inputs = merge_inputs([tensors for _, tensors in encoded])
        outputs = self.model.forward(inputs)  # (R, out_dim)
        if self.metrics is not None:
            rows = sum(job.rows for job, _ in encoded)
            seconds = time.perf_counter() - started
            self.metrics.observe_batch(self.name, rows, len(encoded), seconds)
        start = 0
        for job, _ in encoded:
            part = outputs[start : start + job.rows]
            start += job.rows
            finite = torch.isfinite(part).all(dim=1)
            if not bool(finite.all()):
                row = int((~finite).nonzero()[0])
                where = job.locate(row, "")
                _settle(
                    job,
                    error=RequestError(
                        422,
                        f"{where}: the model's output is not a finite number; an input value is "
                        "far outside the range the model was trained on",
                        where,
                    ),
                )
                continue
            _settle(job, result=self.model.decode(part))


def _settle(job: Job, *, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve a job's future from the worker thread (a no-op once the request gave up)."""

    def apply() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(apply)
    except RuntimeError:  # the loop has closed: nobody is waiting any more
        pass


# Keys of a model batch whose dim 1 is a per-batch length (schema.py): padded when merging.
_PADDED_PREFIXES = ("text:", "seq:", "mask:")


def merge_inputs(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate the model inputs of several requests along the rows.

    Text and sequence columns (and their masks) are padded at the end of dim 1 to the longest
    of the parts: ids 0 (padding), mask False, values 0. Rows stay left-aligned, so each row's
    output is what it would be alone (`TensorData.batch` trims the padding again).
    """
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if key.startswith(_PADDED_PREFIXES):
            width = max(t.shape[1] for t in tensors)
            tensors = [_pad_dim1(t, width) for t in tensors]
        merged[key] = torch.cat(tensors)
    return merged


def _pad_dim1(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    pad = torch.zeros((t.shape[0], width - t.shape[1], *t.shape[2:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=1)
