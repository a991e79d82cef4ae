"""Optimizers and learning-rate schedules, built by name from the train config (losses: the task)."""

from __future__ import annotations

import math

import torch
from torch import nn

from forgeml.config import OptimizerConfig, SchedulerConfig


def build_optimizer(cfg: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over the trainable parameters of `model`.

    With weight decay, only matrices and higher (Linear/conv weights, embeddings) are decayed;
    biases and normalisation gains (1-D) form a second group without decay, as in GPT-2,
    nanoGPT and the Hugging Face Trainer: decaying a LayerNorm gain towards 0 only hurts.
    """
    params: list = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay > 0:
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        if decay and no_decay:
            params = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_scheduler(
    cfg: SchedulerConfig,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-optimizer-step schedule: linear warmup, then constant / step / cosine; or one-cycle.

    None for a constant rate without warmup: nothing to step (and nothing to pay per step).
    """
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    if cfg.name == "constant" and warmup == 0:
        return None
    if cfg.name == "onecycle":
        peak = [group["lr"] for group in optimizer.param_groups]
        # OneCycle has its own warmup phase; default to 30% of the run as in the paper's recipe.
        pct = warmup / total_steps if warmup else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peak, total_steps=max(total_steps, 2), pct_start=min(pct, 0.99)
        )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.name == "step":
            return cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
        if cfg.name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
            return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
