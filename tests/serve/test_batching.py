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

from forgeml.serve.batching import Batcher, QueueFull, merge_inputs
from forgeml.serve.values import RequestError
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
    batcher, metrics = started(runs.reviews)
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


def test_a_lone_request_does_not_wait_for_company(runs: Runs) -> None:
    """Nothing announced: the batch runs at once, not after max_delay_s (here 2 s)."""
    batcher, metrics = started(runs.reviews, max_delay_s=2.0)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit([{"review": "great phone"}], locate, 10)
        return loop.time() - start

    try:
        seconds = [asyncio.run(run()) for _ in range(3)]
        batcher.expect()  # one on its way that never comes: waited for, then given up
        slow = asyncio.run(run())
        batcher.unexpect()
    finally:
        batcher.close(5)
    assert max(seconds) < 0.5, seconds
    assert slow >= 1.9, slow
    assert metrics.batches == [(1, 1)] * 4


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
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):
            await batcher.submit(record, locate, 0.2)
        with pytest.raises(TimeoutError):
            await waiting
        assert not batcher._queue  # withdrawn: the worker will not run it
        second = asyncio.ensure_future(batcher.submit(record, locate, 0.05))
        with pytest.raises(TimeoutError):
            await second

    asyncio.run(run())
