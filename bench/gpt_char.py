"""Character-level Tiny Shakespeare: forgeml's gpt-char config against a nanoGPT-style reference.

The classic small CPU setting of nanoGPT's README (4 layers, 4 heads, 128 dims, context 64,
batch 12, 2,000 iterations, lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4, AdamW
betas (0.9, 0.99), weight decay 0.1 on matrices, clip 1.0, no dropout, no biases), whose
reference validation loss is about 1.88.

- reference: a plain PyTorch re-implementation of nanoGPT's model.py and train.py loop for this
  setting, in this file (its GPT: pre-LayerNorm blocks, `scaled_dot_product_attention`, tied
  embeddings, GPT-2 init; its loop: random blocks from the uint16 token array each iteration,
  `loss.item()` every iteration as with `--log_interval=1`, an estimate of train and val loss
  on 20 random batches each every 250 iterations, `--eval_iters=20`).
- forgeml: `forgeml train configs/gpt-char.yaml` in a subprocess, the same hyper-parameters
  (the config's own evaluation: 240 fixed val blocks every 250 steps, a 200-character sample),
  in fp32 and in bf16 autocast.

Every model is then scored the same way, here: the mean loss on 2,000 blocks spread evenly over
the validation tail (the last 10% of the text). Time is wall clock of the whole training (for
forgeml: the whole command, with start-up, tokenising, evaluations, samples, checkpoints and
the final evaluation). Variants alternate between seeds; MFU is over wall time (a lower bound).

    .venv/bin/python bench/gpt_char.py [--seeds 1337 1 2] [--steps 2000]
    .venv/bin/python bench/gpt_char.py --spread   # forgeml bf16 only: how nanoGPT's estimate moves
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DATA = Path("../shared/data/tinyshakespeare/input.txt")
THREADS = 2
BLOCK, BATCH = 64, 12


# --------------------------------------------------------------------------- nanoGPT-style reference


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = Attention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, vocab: int, n_layer=4, n_head=4, n_embd=128, block=BLOCK) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def reference(
    train: np.ndarray, val: np.ndarray, vocab: int, steps: int, seed: int
) -> tuple[float, nn.Module]:
    torch.manual_seed(seed)
    model = NanoGPT(vocab)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))

    def get_batch(data: np.ndarray):
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy(data[i : i + BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + BLOCK].astype(np.int64)) for i in ix]
        )
        return x, y

    def lr_at(it: int) -> float:
        if it < 100:
            return 1e-3 * it / 100
        ratio = min(1.0, (it - 100) / max(steps - 100, 1))
        return 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    @torch.no_grad()
    def estimate() -> None:
        model.eval()
        for data in (train, val):
            for _ in range(20):
                x, y = get_batch(data)
                F.cross_entropy(model(x).view(-1, vocab), y.view(-1)).item()
        model.train()

    started = time.perf_counter()
    x, y = get_batch(train)
    for it in range(steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        if it % 250 == 0:
            estimate()
        if it == steps:
            break
        loss = F.cross_entropy(model(x).view(-1, vocab), y.view(-1))
        x, y = get_batch(train)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # --log_interval=1
    return time.perf_counter() - started, model


# --------------------------------------------------------------------------- forgeml


def forgeml_run(out: Path, steps: int, precision: str, seed: int) -> tuple[float, nn.Module]:
    command = [
        sys.executable, "-m", "forgeml", "train", "configs/gpt-char.yaml", "--quiet",
        f"train.max_steps={steps}", f"train.precision={precision}", f"seed={seed}",
        f"output.dir={out}", f"output.name=gpt-char-{precision}", "output.overwrite=true",
    ]  # fmt: skip
    # Tokenise once before timing (a warm token cache, as the reference's prepared train.bin).
    subprocess.run([*command, "train.max_steps=1"], check=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    from forgeml.generation.language_model import LanguageModel

    return seconds, LanguageModel.load(out / f"gpt-char-{precision}").model


@torch.no_grad()
def score(model: nn.Module, val: np.ndarray, blocks: int = 2000) -> float:
    """Mean next-token loss on `blocks` blocks spread evenly over the validation tokens."""
    model.eval()
    starts = np.linspace(0, len(val) - BLOCK - 1, blocks).round().astype(np.int64)
    window = torch.from_numpy(val[starts[:, None] + np.arange(BLOCK + 1)].astype(np.int64))
    total = 0.0
    for chunk in window.split(200):
        logits = model({"tokens": chunk[:, :-1]} if hasattr(model, "new_cache") else chunk[:, :-1])
        total += F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten()).item() * len(
            chunk
        )
    return total / blocks


@torch.no_grad()
def estimate_spread(model: nn.Module, val: np.ndarray, draws: int = 50) -> list[float]:
    """nanoGPT's validation estimate (`--eval_iters=20` batches of 12 random blocks: 240 blocks)
    drawn `draws` times with different blocks, sorted: how far one estimate can move."""
    model.eval()
    rng = np.random.default_rng(0)
    estimates = []
    for _ in range(draws):
        starts = rng.integers(0, len(val) - BLOCK - 1, 20 * BATCH)
        window = torch.from_numpy(val[starts[:, None] + np.arange(BLOCK + 1)].astype(np.int64))
        logits = model({"tokens": window[:, :-1]})
        loss = F.cross_entropy(logits.float().flatten(0, 1), window[:, 1:].flatten())
        estimates.append(loss.item())
    return sorted(estimates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    parser.add_argument(
        "--spread",
        action="store_true",
        help="only forgeml bf16 per seed: its own reported val loss, the 2,000-block score and "
        "the spread of 50 nanoGPT-style 240-block estimates",
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    text = DATA.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    cut = int(len(text) * 0.9)
    cut = text.rfind("\n", 0, cut) + 1  # forgeml cuts at a line start; the reference too, here
    train = np.array([stoi[c] for c in text[:cut]], dtype=np.uint16)
    val = np.array([stoi[c] for c in text[cut:]], dtype=np.uint16)

    if args.spread:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in args.seeds:
                seconds, model = forgeml_run(Path(tmp), args.steps, "bf16", seed)
                lines = (Path(tmp) / "gpt-char-bf16/history.jsonl").read_text().splitlines()
                rows = [json.loads(line) for line in lines]
                own = [r["metrics"]["loss"] for r in rows if r["split"] == "val"][-1]
                spread = estimate_spread(model, val)
                print(
                    f"seed {seed}: {seconds:.1f} s; forgeml's own val loss (240 fixed blocks) "
                    f"{own:.4f}; 2,000-block score {score(model, val):.4f}; 50 nanoGPT-style "
                    f"estimates: min {spread[0]:.4f}, p10 {spread[5]:.4f}, median "
                    f"{statistics.median(spread):.4f}, max {spread[-1]:.4f}",
                    flush=True,
                )
        return

    from forgeml.models.gpt import GPT, GPTConfig
    from forgeml.tasks.language_modeling.callbacks import measured_peaks

    shape = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=BLOCK, bias=False)
    flops = GPT(shape.model_copy(update={"vocab_size": len(chars)})).flops_per_token()
    peaks = measured_peaks()

    results: dict[str, list[tuple[float, float]]] = {
        "reference fp32": [],
        "forgeml fp32": [],
        "forgeml bf16": [],
    }
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat, seed in enumerate(args.seeds):
            order = list(results)
            order = order[repeat % 3 :] + order[: repeat % 3]
            for name in order:
                if name.startswith("reference"):
                    seconds, model = reference(train, val, len(chars), args.steps, seed)
                else:
                    seconds, model = forgeml_run(Path(tmp), args.steps, name.split()[1], seed)
                results[name].append((seconds, score(model, val)))
                print(
                    f"{name} seed {seed}: {seconds:.1f} s, val loss {results[name][-1][1]:.4f}",
                    flush=True,
                )
    load.append(os.getloadavg()[0])

    tokens = args.steps * BATCH * BLOCK
    ref = statistics.median(s for s, _ in results["reference fp32"])
    print(
        f"\ntorch {torch.__version__}, {THREADS} threads, load average {load[0]:.1f} -> {load[1]:.1f}"
    )
    print(
        f"{args.steps} steps x {BATCH} x {BLOCK} = {tokens:,} tokens; seeds {args.seeds}; "
        f"{flops / 1e6:.2f} MFLOPs per token (training); matmul peak fp32 "
        f"{peaks['fp32'] / 1e9:.0f}, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s\n"
    )
    print(
        "| run | wall s (median) | ms / step | tokens/s | MFU (wall) | val loss (2,000 blocks) "
        "| val loss per seed | time vs reference |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        seconds = statistics.median(s for s, _ in rows)
        loss = statistics.median(v for _, v in rows)
        peak = peaks["bf16" if "bf16" in name else "fp32"]
        per_seed = ", ".join(f"{v:.3f}" for _, v in rows)
        print(
            f"| {name} | {seconds:.1f} | {seconds / args.steps * 1e3:.1f} | {tokens / seconds:,.0f} "
            f"| {flops * tokens / seconds / peak:.1%} | {loss:.4f} | {per_seed} | {seconds / ref:.2f} |"
        )
    best = min(
        (n for n in results if n.startswith("forgeml")),
        key=lambda n: statistics.median(s for s, _ in results[n]),
    )
    seconds = statistics.median(s for s, _ in results[best])
    loss = statistics.median(v for _, v in results[best])
    ref_loss = statistics.median(v for _, v in results["reference fp32"])
    print(
        f"\nfastest forgeml ({best}): {seconds / ref:.2f}x the reference's time (target <= 0.5), "
        f"val loss {loss:.4f} vs the reference's {ref_loss:.4f} (target: the same loss; the "
        "issue's bar 1.88 is nanoGPT's estimate on 240 random blocks)"
    )
    print(json.dumps({k: v for k, v in results.items()}))


if __name__ == "__main__":
    main()
