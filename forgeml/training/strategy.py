"""How one model is spread over the processes of a torchrun job: DDP or FSDP2.

    strategy  1 process   N processes
    ddp       the model   DistributedDataParallel: a full replica per rank, gradients all-reduced
    fsdp      the model   FSDP2 `fully_shard`: parameters, gradients and optimizer state sharded
                          over ranks and all-gathered per block for forward/backward

Both average gradients over ranks, so the loop's loss scaling is the same for both. The loop
keeps two handles: `model` (the module whose state_dict names the weights) and `net` (what the
forward runs through). Under DDP `net` wraps `model`; under FSDP `fully_shard` turns `model`
itself into the sharded module (its parameters become DTensors) and `net is model`.

Everything that differs between plain tensors and DTensor shards is behind the functions here,
so the training loop reads the same for every strategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from forgeml.distributed import is_sharded, world_size


def wrap(model: nn.Module, strategy: str) -> nn.Module:
    """The module the forward runs through; `model` itself is sharded in place under FSDP."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world_size(),))
        # One FSDP unit per repeated block (transformer layers, ...) or else per child with
        # parameters, then the root: a block's full parameters exist only while it computes.
        for unit in _units(model):
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _units(model: nn.Module) -> list[nn.Module]:
    blocks = [
        block
        for module in model.modules()
        if isinstance(module, nn.ModuleList)
        for block in module
        if any(True for _ in block.parameters())
    ]
    if blocks:
        return blocks
    return [child for child in model.children() if any(True for _ in child.parameters())]


@contextlib.contextmanager
def gradient_sync(net: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient reduction for micro-batches that only accumulate."""
    if enabled or world_size() == 1:
        yield
    elif is_sharded(net):
        net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            net.set_requires_gradient_sync(True)
    else:
        with net.no_sync():
            yield


def plain(value: Tensor) -> Tensor:
    """A DTensor (e.g. the grad norm of sharded gradients) as the full ordinary tensor."""
    full = getattr(value, "full_tensor", None)
    return full() if full is not None else value


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's full weights on CPU. Under FSDP a collective: every rank must call it; rank 0
    gets the gathered tensors, the other ranks an empty dict."""
    if not is_sharded(model):
        return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


# ------------------------------------------------------------------ sharded checkpoints


def save_sharded(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    best_model: dict[str, Tensor] | None,
) -> None:
    """Every rank writes its shards of model, optimizer (and best weights) into `directory`
    with torch.distributed.checkpoint (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    if best_model is not None:
        state["best_model"] = best_model
    dcp.save(state, checkpoint_id=str(directory))


def load_sharded(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, with_best: bool
) -> dict[str, Tensor] | None:
    """Load `save_sharded`'s files into the sharded model and optimizer in place (a collective;
    DCP reshards when the number of ranks changed). Returns the best weights if asked for."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from forgeml.training import dcp_safe

    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    if with_best:
        state["best_model"] = {k: torch.empty_like(v) for k, v in model_state.items()}
    # DCP's own reader and planner unpickle metadata and non-tensor entries; these do not.
    dcp_safe.load(state, directory)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
    )
    return state.get("best_model")
