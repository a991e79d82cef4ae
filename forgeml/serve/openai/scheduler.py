"""Text generation for the OpenAI-compatible routes: a language-model run as the server uses it
(`ServedLM`), and one scheduler thread per model that runs concurrent requests together.

A request handler (openai.py) tokenizes and checks a request on the event loop's thread pool,
then submits one `Job` per choice (prompt x n) with a `Channel`, the request's end of the line.
The scheduler thread owns all torch work of the model:

    queue --> group: the oldest job, plus the queued jobs that can share its batch
              (same sampling settings and stop strings, no seed, and the longest prompt plus the
              largest max_tokens fit the context, so no prompt is cut further than alone)
          --> LanguageModel.start(the group's prompts): a TextStream with one row per job
    steps: up to MAX_GROUPS groups generate at once; each turn of the loop first starts a new
           group from the queue (if there is room), then advances every group by one token.
           Per row: the new text piece, and whether the job is finished (a stop string, the end-
           of-text token, or its own max_tokens) --> events to the job's Channel

Static batches per group, but not static scheduling: a request arriving while others generate
starts its own group at the next step instead of waiting for them to finish, so its first token
comes after one prefill, not after a whole generation. With `--no-batching` one job runs at a
time (groups of one, one group), for comparisons.

A group generates up to its largest max_tokens; a job with a smaller one is finished (and its
request answered) when it reaches it, and a group whose jobs are all finished or abandoned is
dropped at once. A seeded job runs in a group of its own, so the same seed gives the same text
whatever else the server is doing. Jobs whose request gave up (timeout, client gone) are skipped
before they start and ignored once running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from forgeml.generation.sampling import SamplingParams
from forgeml.serve.worker import QueueFull, ShuttingDown, Worker, WorkerMetrics
from forgeml.tasks.language_modeling.serving import ServedLM

log = logging.getLogger("forgeml.serve")
MAX_GROUPS = 4  # groups generating at once; each costs one forward per step

__all__ = [
    "Channel",
    "Done",
    "Failed",
    "Job",
    "QueueFull",
    "SamplingParams",
    "Scheduler",
    "ServedLM",
    "ShuttingDown",
    "Text",
]


# ----------------------------------------------------------------------------- jobs and events


@dataclass(frozen=True)
class Text:
    index: int  # the choice
    text: str


@dataclass(frozen=True)
class Done:
    index: int
    finish_reason: str  # "stop" (a stop string or end of text) | "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    index: int
    error: BaseException


Event = Text | Done | Failed


class Channel:
    """One request's end: the events of its jobs, in order. Made and read on the event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.closed = False  # set on the loop when the request gave up; the worker drops its jobs

    async def get(self, timeout_s: float) -> Event:
        """The next event. Raises TimeoutError after `timeout_s`."""
        if timeout_s <= 0:
            raise TimeoutError
        return await asyncio.wait_for(self.events.get(), timeout_s)


@dataclass(eq=False)
class Job:
    """One choice of one request: a prompt (token ids, already fitted to the context) to
    continue by up to `params.max_new_tokens` tokens, with its own `params.seed` (or None)."""

    prompt: list[int]
    params: SamplingParams
    stop: tuple[str, ...]  # text that ends the choice (not included)
    index: int
    channel: Channel
    sent: int = field(default=0)  # worker: characters of text delivered so far
    done: bool = field(default=False)  # worker: finished, failed or abandoned

    @property
    def max_tokens(self) -> int:
        return self.params.max_new_tokens

    @property
    def seed(self) -> int | None:
        return self.params.seed

    def shares_settings(self, other: Job) -> bool:
        """Whether the two can generate in one group: the same sampling (apart from how many
        tokens each wants, and neither seeded) and the same stop strings."""
        plain = replace(self.params, max_new_tokens=1)
        return plain == replace(other.params, max_new_tokens=1) and self.stop == other.stop


class GenerationMetrics(WorkerMetrics, Protocol):
    def add_generated_tokens(self, model: str, tokens: int) -> None: ...


@dataclass(eq=False)
class _Group:
    jobs: list[Job]
    stream: Any  # forgeml.generation.language_model.TextStream
    steps: Iterator[list[str]]
    counts: list[int]  # tokens per row after the last step
    started: float


# ----------------------------------------------------------------------------- scheduler


class Scheduler(Worker):
    """The queue and generation thread of one language model. `start()` loads it (on the thread).

    `batching=False` (`--no-batching`): one choice at a time (groups of one, one group).
    """

    thread_prefix = "forgeml-generate"

    def __init__(self, model: ServedLM, *, batching: bool = True, **options: Any) -> None:
        super().__init__(model, **options)
        if not batching:
            self.max_batch_size, self.max_delay_s = 1, 0.0
        self.max_groups = MAX_GROUPS if batching else 1

    # ------------------------------------------------------------------------ event loop side

    def submit(self, jobs: Sequence[Job], *, expected: bool = False) -> None:
        """Queue all of a request's jobs, or none. `expected`: announced with `expect()`.

        Raises:
            QueueFull: they do not fit in `max_queue` (429).
            ShuttingDown: the server is stopping (503).
        """
        self._enqueue(list(jobs), expected=expected)

    def withdraw(self, channel: Channel) -> None:
        """The request behind `channel` gave up: drop its queued jobs, ignore its running ones."""
        channel.closed = True
        with self._cond:
            if not any(job.channel is channel for job in self._queue):
                return
            self._queue = deque(job for job in self._queue if job.channel is not channel)
            depth = len(self._queue)
        self._report_depth(depth)

    # ------------------------------------------------------------------------ worker side

    def serve(self) -> None:
        groups: list[_Group] = []
        while (jobs := self._take(idle=not groups, room=len(groups) < self.max_groups)) is not None:
            if jobs and (group := self._start_group(jobs)) is not None:
                groups.append(group)
            for group in list(groups):
                if not self._step(group):
                    groups.remove(group)

    def _take(self, *, idle: bool, room: bool) -> list[Job] | None:
        """The jobs of a new group ([] for none now); None once closed and nothing is left.

        Idle (no group running): waits for a job, then -- up to `max_delay_s` -- for requests
        already on their way (`expect()`), never for requests that are not coming. Busy: never
        waits, so the running groups keep stepping.
        """
        with self._cond:
            if idle:
                if not self._wait_for_job():
                    return None  # closing, and every job has been run
                self._gather(lambda: len(self._queue) >= self.max_batch_size)
            if not room or not self._queue:
                return []
            jobs = self._select()
            depth = len(self._queue)
        self._report_depth(depth)
        return jobs

    def _select(self) -> list[Job]:
        """Take the oldest live job and the queued jobs that can join it (holding the lock)."""
        while self._queue and self._queue[0].channel.closed:
            self._queue.popleft()
        if not self._queue:
            return []
        head = self._queue.popleft()
        jobs = [head]
        if head.seed is not None or self.max_batch_size == 1:
            return jobs
        context = self.model.context_length
        width, new = len(head.prompt), head.max_tokens
        kept: deque[Job] = deque()
        while self._queue and len(jobs) < self.max_batch_size:
            job = self._queue.popleft()
            if job.channel.closed:
                continue
            w, n = max(width, len(job.prompt)), max(new, job.max_tokens)
            if job.seed is None and job.shares_settings(head) and w + n <= context:
                jobs.append(job)
                width, new = w, n
            else:
                kept.append(job)
        kept.extend(self._queue)
        self._queue = kept
        return jobs

    def _start_group(self, jobs: list[Job]) -> _Group | None:
        head = jobs[0]  # the group shares its settings; only a lone job has a seed
        longest = max(job.max_tokens for job in jobs)
        try:
            stream = self.model.lm.start(
                [job.prompt for job in jobs],
                replace(head.params, max_new_tokens=longest),
                stop=list(head.stop),
            )
        except Exception as exc:  # settings openai.py let through: a bug, but not a crash
            log.exception("model %s: could not start generating", self.name)
            self._deliver([(job, Failed(job.index, exc)) for job in jobs])
            return None
        return _Group(jobs, stream, iter(stream), [0] * len(jobs), time.perf_counter())

    def _step(self, group: _Group) -> bool:
        """Advance `group` by one token; deliver its events. False: the group is over."""
        try:
            pieces: list[str] | None = next(group.steps)
        except StopIteration:
            pieces = None  # every row is finished (the final pieces came with the last step)
        except Exception as exc:  # a bug: fail this group, keep serving
            log.exception("model %s: generation failed", self.name)
            self._deliver([(j, Failed(j.index, exc)) for j in group.jobs if not j.done])
            for job in group.jobs:
                job.done = True
            return False
        stream, events, generated = group.stream, [], 0
        for row, job in enumerate(group.jobs):
            if job.done:
                continue
            if job.channel.closed:
                job.done = True
                continue
            tokens = stream.tokens[row]
            count, before = len(tokens), group.counts[row]
            group.counts[row] = count
            generated += min(count, job.max_tokens) - min(before, job.max_tokens)
            piece = "" if pieces is None else pieces[row]
            if stream.stopped[row]:  # a stop string: `piece` is the rest of the text before it
                self._send(job, piece, events)
                self._finish(job, "stop", min(count, job.max_tokens), events)
            elif count >= job.max_tokens:
                self._finish_from(job, tokens[: job.max_tokens], "length", events)
            elif pieces is None or count == before:  # the end-of-text token (or the end)
                self._finish_from(job, tokens, "stop", events)
            else:
                self._send(job, piece, events)
        if self.metrics is not None and generated:
            self.metrics.add_generated_tokens(self.name, generated)
        self._deliver(events)
        if all(job.done for job in group.jobs):
            if self.metrics is not None:
                seconds = time.perf_counter() - group.started
                requests = len({id(job.channel) for job in group.jobs})
                self.metrics.observe_batch(self.name, len(group.jobs), requests, seconds)
            return False  # dropping the stream ends it, even if some rows could go on
        return True

    def _send(self, job: Job, piece: str, events: list[tuple[Job, Event]]) -> None:
        if piece:
            job.sent += len(piece)
            events.append((job, Text(job.index, piece)))

    def _finish_from(
        self, job: Job, tokens: list[int], reason: str, events: list[tuple[Job, Event]]
    ) -> None:
        """Finish `job` with what the stream still held back of its text (a possible start of
        a stop string, an incomplete character): all of it is final now."""
        text = self.model.decode(tokens)
        cuts = [text.find(s) for s in job.stop if s and s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        self._send(job, text[job.sent :], events)
        self._finish(job, reason, len(tokens), events)

    def _finish(
        self, job: Job, reason: str, completion_tokens: int, events: list[tuple[Job, Event]]
    ) -> None:
        job.done = True
        events.append((job, Done(job.index, reason, len(job.prompt), completion_tokens)))

    def _deliver(self, events: list[tuple[Job, Event]]) -> None:
        """Hand one step's events to their requests: one wake-up of each event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Channel, Event]]] = {}
        for job, event in events:
            by_loop.setdefault(job.channel.loop, []).append((job.channel, event))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass


def _put_all(batch: list[tuple[Channel, Event]]) -> None:
    for channel, event in batch:
        if not channel.closed:
            channel.events.put_nowait(event)
