"""Sharded (FSDP) checkpoints are read back without unpickling code: a crafted `.metadata` or a
crafted non-tensor entry is refused before anything in it runs."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from forgeml.errors import CheckpointError
from forgeml.training import dcp_safe
from forgeml.training.dcp_safe import read_metadata
from forgeml.training.strategy import load_sharded

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _save(directory: Path) -> dict:
    model, optimizer = _trained()
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(directory))
    return state


class _Payload:
    """Unpickling this runs `touch MARKER` (os.system): what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_restores_tensors_and_param_groups(tmp_path: Path) -> None:
    saved = _save(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()  # creates state of the right shapes, different values
    model_state, optim_state = get_state_dict(model, optimizer)
    load_sharded(tmp_path, model, optimizer, with_best=False)  # what resume runs, one process
    for key, value in saved["model"].items():
        assert torch.equal(model.state_dict()[key], value)
    assert optimizer.param_groups[0]["lr"] == 1e-3  # a non-tensor entry
    exp_avg = saved["optimizer"]["state"]["0.weight"]["exp_avg"]
    assert torch.equal(optimizer.state[model[0].weight]["exp_avg"], exp_avg)


def test_crafted_metadata_is_refused_and_never_runs(tmp_path: Path) -> None:
    _save(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"posix\.system is not part of a checkpoint"):
        read_metadata(tmp_path / ".metadata")
    model, optimizer = _trained()
    with pytest.raises(CheckpointError, match=r"cannot be loaded .*posix\.system is not part of"):
        load_sharded(tmp_path, model, optimizer, with_best=False)
    assert not marker.exists()
    # The stock reader would have run it: the test's payload is real.
    pickle.loads((tmp_path / ".metadata").read_bytes())
    assert marker.exists()


def test_metadata_of_another_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    with pytest.raises(CheckpointError, match="holds a dict, not checkpoint metadata"):
        read_metadata(tmp_path / ".metadata")


def test_crafted_non_tensor_entry_is_loaded_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"extra": _Payload(marker)}, checkpoint_id=str(tmp_path))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"unsupported GLOBAL posix\.system"):
        dcp_safe.load({"extra": None}, tmp_path)
    assert not marker.exists()
