"""Writing a language model's run directory (forgeml.json last, as every run)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torch import nn

from forgeml.config import Config
from forgeml.data.corpus import Corpus
from forgeml.run_dir import RunDir
from forgeml.training.loop import FitResult

TASK = "language_modeling"


def save_lm_run(
    run_dir: RunDir,
    cfg: Config,
    model: nn.Module,
    corpus: Corpus,
    result: FitResult,
    metrics: dict[str, dict[str, Any]],
    weights: dict,
    *,
    block: int,
) -> None:
    if not (run_dir.path / "history.jsonl").exists():
        for row in result.history:
            run_dir.append_history(row)
    tokens = result.steps * cfg.train.batch_size * cfg.train.grad_accum_steps * block
    run_dir.write_json(
        "metrics.json",
        {
            **metrics,
            "stop_reason": result.stop_reason,
            "epochs": result.epochs,
            "steps": result.steps,
            "tokens_trained": tokens,
            "skipped_steps": result.skipped_steps,
            "precision": result.precision,
        },
    )
    if hasattr(model, "save_to_run"):
        # A pretrained causal LM keeps its config.json and tokenizer files in RUN/pretrained/
        # (loading never reads model.path again); with lora.merge the adapters are merged.
        weights = model.save_to_run(run_dir.path, weights)
    sha = run_dir.save_weights(weights)
    plot_lm_history(result.history, run_dir.path / "training_curves.png")
    manifest = {
        "name": run_dir.path.name,
        "task": TASK,
        "model": cfg.model.name,
        "num_params": sum(p.numel() for p in model.parameters()),
        "tokenizer": corpus.tokenizer.kind,
        "vocab_size": corpus.tokenizer.vocab_size,
        "eos_token": corpus.tokenizer.eos_token,
        "context_length": block,
        "weights_sha256": sha,
        "config_sha256": cfg.digest(),
        "stop_reason": result.stop_reason,
        "precision": result.precision,
        "data_summary": {
            "train_tokens": len(corpus.train),
            "val_tokens": 0 if corpus.val is None else len(corpus.val),
        },
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    run_dir.finish(manifest)


def plot_lm_history(rows: list[dict], path: Path) -> None:
    """Train and val loss against the optimizer step (language models run one long epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for split, style in (("train", "--"), ("val", "-")):
        points = [(r["step"], r["metrics"]["loss"]) for r in rows if r["split"] == split]
        if points:
            ax.plot(*zip(*points, strict=True), style, marker=".", label=f"{split} loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
