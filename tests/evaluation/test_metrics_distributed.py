"""Multilabel and binary MetricSets synced over 2 gloo processes equal one process on all rows."""

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from forgeml.evaluation.metrics import MetricSet

N, K = 101, 4


def data():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(N, K, generator=g) < 0.3).float()
    target[:, 3] = 0.0  # one-class label: left out of the AUC macros on every rank alike
    logits = torch.randn(N, K, generator=g) + 2.0 * target - 1.0
    return logits, target


def results(rank: int, world: int) -> dict:
    """Each rank's view: its strided shard in batches of 7, and everything on rank 0 only."""
    logits, target = data()
    out = {}
    for task, outputs, y in (
        ("multilabel", logits, target),
        ("binary", logits[:, :1], target[:, 0].long()),
    ):
        names = list("abcd") if task == "multilabel" else None
        sharded = MetricSet(task, names)
        for idx in torch.split(torch.arange(N)[rank::world], 7):
            sharded.update(outputs[idx], y[idx])
        out[f"{task}_sharded"] = sharded.compute()
        lonely = MetricSet(task, names)  # rank 1 sees no batch at all
        if rank == 0:
            lonely.update(outputs, y)
        out[f"{task}_lonely"] = lonely.compute()
    return out


def worker(rank: int, world: int, store_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        result = results(rank, world)
    finally:
        dist.destroy_process_group()
    with open(f"{out_path}.{rank}", "w") as f:
        json.dump(result, f)


def test_synced_metrics_equal_one_process(tmp_path):
    expected = results(0, 1)  # no process group: one process, all rows
    out = tmp_path / "out"
    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"out.{rank}").read_text())
        for key, value in expected.items():
            assert _close(got[key], value), (rank, key)
    assert expected["multilabel_sharded"]["per_label"]["d"]["roc_auc"] is None


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-6
    return a == b
