"""`Trainer`: the mechanics under the loop. `fit` (loop.py) says when; this says how.

It holds what one fit changes -- the model and the module the forward runs through (DDP/FSDP,
strategy.py), optimizer, schedule, data order, RNGs, the running loss sums and `LoopState` --
and does the arithmetic of a step: the forward/backward of one micro-batch with its share of the
optimizer step's rows, gradient clipping, the step itself, and the checkpoint of all of it.
Policies (early stopping, checkpoint cadence, the non-finite guard, ...) are callbacks
(callbacks.py) that read and set its public attributes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from forgeml.config import TrainConfig
from forgeml.distributed import all_gather, global_mean, is_sharded, rank, world_size
from forgeml.errors import ForgeError
from forgeml.run_dir import load_state
from forgeml.runtime import autocast, resolve_precision
from forgeml.training.checkpoint import Checkpointer, capture_rng, restore_rng
from forgeml.training.optim import build_optimizer, build_scheduler
from forgeml.training.strategy import gradient_sync, load_sharded, plain, wrap


@dataclass
class LoopState:
    """Where the loop is: everything besides model/optimizer/RNG a checkpoint must hold."""

    epoch: int = 1  # the epoch in progress (1-based)
    batch: int = 0  # the next batch of that epoch
    step: int = 0  # optimizer steps taken
    seen: int = 0  # rows seen in this epoch
    skipped: int = 0  # optimizer steps skipped for non-finite values
    stop_reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # early stopping (callbacks.EarlyStopping keeps these here so a checkpoint holds them)
    best_value: float | None = None
    best_epoch: int = 0
    evals_without_gain: int = 0


class Trainer:
    """One fit's state and arithmetic. Args as `fit`'s (loop.py)."""

    def __init__(
        self,
        model: nn.Module,
        train: Any,
        val: Any | None,
        cfg: TrainConfig,
        *,
        steps: Any,
        seed: int,
        callbacks: Sequence[Any],
        checkpointer: Checkpointer | None,
    ) -> None:
        self.model, self.cfg, self.steps = model, cfg, steps
        self.callbacks, self.checkpointer = list(callbacks), checkpointer
        self._handlers: dict[str, list[Any]] = {}  # event -> the callbacks' bound methods
        self.device = next(model.parameters()).device
        num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.precision = resolve_precision(
            cfg.precision, self.device, num_params=num_params, batch_size=cfg.batch_size
        )
        self.train_data = train.to(self.device)
        self.val_data = val.to(self.device) if val is not None else None
        self.world, self.rank = world_size(), rank()
        rows = len(self.train_data)
        self.batches_per_epoch = math.ceil(rows / cfg.batch_size)
        if self.world > 1 and 0 < rows % cfg.batch_size < self.world:
            self.batches_per_epoch -= 1  # a last global batch too small to give every rank a row
        self.usable_rows = min(rows, self.batches_per_epoch * cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum_steps)
        self.total_steps = self.steps_per_epoch * cfg.max_epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.order = torch.Generator().manual_seed(seed)  # data order, apart from init/dropout
        self.augment_rng = torch.Generator().manual_seed(seed + 1)
        self.epoch_order = self.order.get_state()  # the generator before this epoch's randperm
        self.state = LoopState()
        self.best_state: dict[str, Tensor] | None = None  # the best weights, when kept apart
        self.improved = False  # the last epoch-end evaluation was the best so far
        self.loss_sum = torch.zeros((), device=self.device)  # on device: no sync per batch
        self.last_loss = self.loss_sum  # the last micro-batch's loss (for the log line)
        self.grad_norm: Tensor | None = None  # this step's global gradient norm, if computed
        self.step_rows = 0  # rows (over all ranks) of the last optimizer step
        self.best: dict[str, Any] = {}  # early stopping's summary, for FitResult
        self.group_loss = torch.zeros((), device=self.device)  # this optimizer step's loss sum
        self.group_rows = 0

    def setup(self, resume: dict[str, Any] | None) -> None:
        """Wrap the model, build optimizer and schedule, and continue from `resume` if given."""
        if resume is not None and resume["model"] is not None:
            load_strict(self.model, resume["model"])  # DDP then starts every rank from these
        # DDP wraps `model`; FSDP shards it in place, so the optimizer is built after this.
        self.net = wrap(self.model, self.cfg.strategy)
        self.optimizer = build_optimizer(self.cfg.optimizer, self.model)
        self.scheduler = build_scheduler(
            self.cfg.scheduler,
            self.optimizer,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if resume is not None:
            self._restore(resume)

    # ------------------------------------------------------------------ one epoch, one step

    def begin_epoch(self) -> None:
        self.model.train()
        self.order.set_state(self.epoch_order)
        rows = len(self.train_data)
        self.permutation = torch.randperm(rows, generator=self.order).to(self.device)
        self.epoch_started = time.perf_counter()
        self.group_loss.zero_()
        self.group_rows = 0

    def is_step_end(self, batch: int) -> bool:
        """Whether micro-batch `batch` completes an optimizer step."""
        accum = self.cfg.grad_accum_steps
        return (batch + 1) % accum == 0 or batch + 1 == self.batches_per_epoch

    def forward_backward(self, batch: int) -> None:
        """Forward, loss and backward of micro-batch `batch` of this rank's rows."""
        size, accum = self.cfg.batch_size, self.cfg.grad_accum_steps
        index = self.permutation[batch * size : (batch + 1) * size]  # the global batch
        local = index[self.rank :: self.world] if self.world > 1 else index  # this rank's rows
        self.batch = batch  # the micro-batch in progress (error messages name it)
        inputs, target = self.train_data.batch(local)
        if self.steps.augment is not None:
            inputs = self.steps.augment(inputs, self.augment_rng)
        # Weight each micro-batch by its share of the rows of this optimizer step (over all
        # ranks): the step then sees the gradient of the mean over all of them, as one big batch
        # on one process would, also for short last batches.
        first = batch - batch % accum
        last = min(first + accum, self.batches_per_epoch)
        rows = min(last * size, self.usable_rows) - first * size
        scale = len(local) * self.world / rows
        with gradient_sync(self.net, self.is_step_end(batch)):
            with autocast(self.precision, self.device):
                outputs = self.net(inputs)  # (B, out_dim), or (B, T, V) for a language model
            loss = self.steps.loss(outputs.float(), target)
            (loss * scale if scale != 1.0 else loss).backward()
        self.group_loss.add_(loss.detach(), alpha=len(local))
        self.group_rows += len(local)
        self.last_loss = loss

    def clip_gradients(self) -> None:
        """Clip to `grad_clip` (global L2 norm); the norm is kept for the non-finite guard."""
        self.grad_norm = None
        if self.cfg.grad_clip is not None:
            self.grad_norm = plain(nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))

    def optimizer_step(self, apply: bool) -> None:
        """Apply the accumulated gradients (or drop them: a refused step), then move on."""
        if apply:
            self.optimizer.step()
            self.loss_sum.add_(self.group_loss)
            self.state.seen += self.group_rows
        else:
            self.state.skipped += 1
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.group_loss.zero_()
        self.step_rows, self.group_rows = self.group_rows * self.world, 0
        self.state.step += 1

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, Any]:
        """The task's metrics of the model on the validation split."""
        return self.steps.evaluate(self.model, self.val_data, self.precision)

    def rows(self, *, mid_epoch: bool) -> list[dict[str, Any]]:
        """History rows of the training loss so far (with the epoch's rows/s at its end) and,
        with a validation split, of an evaluation on it."""
        from forgeml.evaluation.metrics import scalar_metrics

        state, lr = self.state, self.optimizer.param_groups[0]["lr"]
        train = {"loss": global_mean(self.loss_sum, state.seen)}
        rate = None
        if not mid_epoch:  # rows/s over all ranks (shards are equal)
            rate = state.seen * self.world / max(time.perf_counter() - self.epoch_started, 1e-9)
        rows = [history_row(state.step, state.epoch, "train", train, lr, rate)]
        if self.val_data is not None:
            val = scalar_metrics(self.evaluate())
            rows.append(history_row(state.step, state.epoch, "val", val, lr, None))
        return rows

    def record(self, rows: list[dict[str, Any]], *, mid_epoch: bool) -> None:
        """Keep one evaluation's rows in the history and tell the callbacks."""
        self.state.history.extend(rows)
        self.emit("on_evaluated", self, rows, mid_epoch)
        for row in rows:
            self.emit("on_eval_end", row)  # the public per-row event (history.jsonl, samples)

    def next_epoch(self) -> None:
        """Move to the start of the next epoch (before a checkpoint, so a resume starts there)."""
        state = self.state
        state.epoch, state.batch, state.seen = state.epoch + 1, 0, 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.epoch_order = self.order.get_state()

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, *, is_best: bool = False) -> Path | None:
        """Everything a resume needs, written atomically; None without a checkpointer."""
        if self.checkpointer is None:
            return None
        state, rng = self.state, capture_rng()
        # At an epoch end whose evaluation was the best, the model weights are the best ones.
        current_is_best = state.batch == 0 and state.best_epoch == state.epoch - 1
        best = self.best_state if self.best_state is not None and not current_is_best else None
        tensors = {
            "epoch_order": self.epoch_order,
            "augment_rng": self.augment_rng.get_state(),
            "loss_sum": self.loss_sum.detach().cpu(),
            "torch_rng": rng["torch"],
            "cuda_rng": rng["cuda"],
        }
        if self.world > 1:  # what differs per rank: its rows' loss sum and count, its RNG
            tensors["rank_loss_sum"] = all_gather(self.loss_sum.detach().double().cpu())
            tensors["rank_seen"] = all_gather(torch.tensor(state.seen))
            tensors["rank_torch_rng"] = all_gather(rng["torch"])
        return self.checkpointer.save(
            step=state.step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            trainer={
                "loop": asdict(state),
                "rng": {k: rng[k] for k in ("python", "numpy")},
                "sharded_best": best is not None and is_sharded(self.model),
            },
            tensors=tensors,
            best_model=best,
            is_best=is_best,
        )

    def _restore(self, resume: dict[str, Any]) -> None:
        self.best_state = resume["best_model"]
        if resume["sharded"] is not None:
            with_best = resume["trainer"].get("sharded_best", False)
            self.best_state = load_sharded(
                resume["sharded"], self.model, self.optimizer, with_best=with_best
            )
        else:
            self.optimizer.load_state_dict(resume["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(resume["scheduler"])
        state = self.state = LoopState(**resume["trainer"]["loop"])
        tensors = resume["tensors"]
        self.epoch_order = tensors["epoch_order"]
        self.augment_rng.set_state(tensors["augment_rng"])
        self.loss_sum, torch_rng = tensors["loss_sum"].to(self.device), tensors["torch_rng"]
        if "rank_seen" in tensors:  # written by a torchrun job: each rank takes its own part
            self.loss_sum, state.seen, torch_rng = own_part(tensors, self.loss_sum, state.seen)
        rng = {**resume["trainer"]["rng"], "torch": torch_rng, "cuda": tensors["cuda_rng"]}
        restore_rng(rng)
        if self.best_state is None and state.batch == 0 and state.best_epoch == state.epoch - 1:
            self.best_state = copy.deepcopy(self.model.state_dict())  # its weights are the best
        if state.stop_reason in ("max_epochs", "max_steps"):
            state.stop_reason = None  # the limits may have been raised for this resume

    # ------------------------------------------------------------------ events

    def emit(self, event: str, *args: Any) -> list[Any]:
        """Call `event` on every callback that has it, in order; their return values."""
        handlers = self._handlers.get(event)
        if handlers is None:  # looked up once per event: the per-batch events stay cheap
            handlers = self._handlers[event] = [
                h for c in self.callbacks if (h := getattr(c, event, None)) is not None
            ]
        return [handler(*args) for handler in handlers]


def history_row(
    step: int, epoch: int, split: str, metrics: dict, lr: float, rate: float | None
) -> dict[str, Any]:
    """One line of history.jsonl."""
    row = {"step": step, "epoch": epoch, "split": split, "metrics": metrics, "lr": lr}
    if rate is not None:
        row["samples_per_s"] = rate
    return row


def own_part(tensors: dict[str, Tensor], loss_sum: Tensor, seen: int) -> tuple[Tensor, int, Tensor]:
    """This rank's loss sum, row count and RNG state from a checkpoint of a torchrun job.

    With another number of ranks than the job that wrote it, rank 0 takes the sums (the epoch's
    train loss stays right) and the other ranks start from zero and rank 0's RNG."""
    world, this = world_size(), rank()
    if len(tensors["rank_seen"]) == world:
        return (
            tensors["rank_loss_sum"][this].to(loss_sum),
            int(tensors["rank_seen"][this]),
            tensors["rank_torch_rng"][this].clone(),  # its own storage: set_rng_state needs it
        )
    if this == 0:
        total = tensors["rank_loss_sum"].sum().to(loss_sum)
        return total, int(tensors["rank_seen"].sum()), tensors["torch_rng"]
    return torch.zeros_like(loss_sum), 0, tensors["torch_rng"]


def load_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """load_state_dict, strict except for tied aliases a checkpoint stores once."""
    missing, unexpected = load_state(model, state)
    if missing or unexpected:
        raise ForgeError(
            f"the checkpoint does not fit the model (missing: {missing[:5]}, unexpected: "
            f"{unexpected[:5]}); the model config or code changed since it was written"
        )
