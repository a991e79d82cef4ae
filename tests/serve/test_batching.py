"""The batcher in-process: merged requests get exactly their own predictions, a bad request
fails alone, a full queue refuses, a timed-out request leaves the queue."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
import torch
from serve_helpers import Runs

from forgeml.serve.errors import RequestError
from forgeml.serve.kserve.batcher import Batcher, merge_inputs
from forgeml.serve.worker import QueueFull
from forgeml.tasks.table.predictor import Predictor
from forgeml.tasks.table.serving import ServedModel


class Recorder:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.truncated: dict[str, int] = {}

    def observe_batch(self, model: str, rows: int, requests: int, seconds: float) -> None:
        self.batches.append((rows, requests))

    def set_queue_depth(self, model: str, depth: int) -> None:
        pass

    def add_truncated(self, model: str, column: str, rows: int) -> None:
        self.truncated[column] = self.truncated.get(column, 0) + rows


def locate(row: int, column: str) -> str:
    return f"instances[{row}].{column}" if column else f"instances[{row}]"


def started(run_dir: Any, **options: Any) -> tuple[Batcher, Recorder]:
    loaded = threading.Event()
    metrics = Recorder()
    batcher = Batcher(
        ServedModel(run_dir, "m"),
        max_batch_size=options.pop("max_batch_size", 64),
        max_delay_s=options.pop("max_delay_s", 0.3),
        max_queue=options.pop("max_queue", 16),
        metrics=metrics,
        on_loaded=lambda _b, error: loaded.set() if error is None else None,
    )
    batcher.start()
    assert loaded.wait(30)
    return batcher, metrics


def test_merged_requests_get_their_own_predictions(runs: Runs) -> None:
    batcher, metrics = started(runs.reviews, max_delay_s=600.0)  # waits for all: announced
    jobs = [
        ["great phone"],
        ["awful and broken, the phone is bad and I hate it", "fine"],
        ["good", "   "],  # an empty text: this request fails, the others do not
        ["love it love it love it love it"],
    ]

    for _ in jobs:  # as the server does when a request's body starts to arrive
        batcher.expect()

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(
                batcher.submit([{"review": t} for t in texts], locate, 10, expected=True)
                for texts in jobs
            ),
            return_exceptions=True,
        )

    try:
        results = asyncio.run(run())
    finally:
        batcher.close(5)
    predictor = Predictor(runs.reviews)
    for texts, result in zip(jobs, results, strict=True):
        if "   " in texts:
            assert isinstance(result, RequestError) and result.status == 422
            assert result.field == "instances[1].review"
            continue
        expected = predictor.predict([{"review": t} for t in texts])
        assert [r["prediction"] for r in result] == [e["prediction"] for e in expected]
        got = [list(r["probabilities"].values()) for r in result]
        np.testing.assert_allclose(
            got, [list(e["probabilities"].values()) for e in expected], atol=1e-6
        )
    assert metrics.batches == [(4, 3)]  # one forward: 4 rows of the 3 good requests
    assert metrics.truncated == {}  # short texts: nothing cut


def test_texts_cut_to_max_length_are_counted(runs: Runs) -> None:
    batcher, metrics = started(runs.reviews, max_delay_s=0.0)
    long_text = " ".join(["great"] * 400)  # max_length 256 (the default)
    records = [{"review": long_text}, {"review": "fine"}, {"review": long_text}]
    try:
        asyncio.run(batcher.submit(records, locate, 10))
    finally:
        batcher.close(5)
    assert metrics.truncated == {"review": 2}


async def taken(batcher: Batcher) -> None:
    """Wait until a job just submitted with `ensure_future` is queued (the task's first step,
    one turn of the loop) and the worker has taken it (it may still be gathering its batch)."""
    await asyncio.sleep(0)
    deadline = asyncio.get_running_loop().time() + 30
    while batcher._queue:
        assert asyncio.get_running_loop().time() < deadline, "the worker never took the job"
        await asyncio.sleep(0.01)


def test_a_batch_waits_only_for_requests_on_their_way(runs: Runs) -> None:
    """The batch delay is 10 min here: a request that waited for it would never finish, and each
    wait below is capped at 30 s; only announced requests (`expect()`) are waited for."""
    batcher, metrics = started(runs.reviews, max_delay_s=600.0)
    one = [{"review": "great phone"}]

    async def alone() -> None:  # nothing announced: runs at once
        await asyncio.wait_for(batcher.submit(one, locate, 30), 30)

    async def joined() -> None:  # the worker has taken the first; the second comes and joins
        batcher.expect()
        first = asyncio.ensure_future(batcher.submit(one, locate, 30))
        await taken(batcher)
        assert not first.done()  # waiting for the announced one
        await asyncio.wait_for(batcher.submit(one, locate, 30, expected=True), 30)
        await asyncio.wait_for(first, 30)

    async def withdrawn() -> None:  # the announced one fails before coming: no more waiting
        batcher.expect()
        first = asyncio.ensure_future(batcher.submit(one, locate, 30))
        await taken(batcher)
        batcher.unexpect()
        await asyncio.wait_for(first, 30)

    try:
        for case in (alone, alone, joined, withdrawn):
            asyncio.run(case())
    finally:
        batcher.close(5)
    assert metrics.batches == [(1, 1), (1, 1), (2, 2), (1, 1)]


def test_merge_pads_texts_to_the_longest() -> None:
    a = {"text:t": torch.tensor([[5, 6, 7]]), "mask:t": torch.tensor([[True, True, True]])}
    b = {"text:t": torch.tensor([[8], [9]]), "mask:t": torch.tensor([[True], [True]])}
    merged = merge_inputs([a, b])
    assert merged["text:t"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 0, 0]]
    assert merged["mask:t"].tolist() == [[True] * 3, [True, False, False], [True, False, False]]


def test_full_queue_refuses_and_a_timed_out_request_leaves_the_queue(runs: Runs) -> None:
    batcher = Batcher(  # never started: jobs stay queued
        ServedModel(runs.tabular, "m"), max_batch_size=8, max_delay_s=0.0, max_queue=1
    )
    record = [{"age": 30.0, "income": 1000.0, "color": "red"}]

    async def run() -> None:
        waiting = asyncio.ensure_future(batcher.submit(record, locate, 0.2))
        await asyncio.sleep(0)  # one turn of the loop: the task's first step queues the job
        assert len(batcher._queue) == 1
        with pytest.raises(QueueFull):
            await batcher.submit(record, locate, 0.2)
        with pytest.raises(TimeoutError):
            await waiting
        assert not batcher._queue  # withdrawn: the worker will not run it
        second = asyncio.ensure_future(batcher.submit(record, locate, 0.05))
        with pytest.raises(TimeoutError):
            await second

    asyncio.run(run())
