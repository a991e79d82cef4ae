"""200 training steps of a tiny character GPT: forgeml's `GPT` against a plain PyTorch GPT.

The workload of tests/test_generation.py's test_a_tiny_char_model_learns_a_pattern_and_greedy_
repeats_it (which used to assert it took < 10 s): "forgeml makes models. " x 40, a 2-layer,
2-head, 32-dim GPT with context 32 (learned positions, biases, tied embeddings), Adam lr 3e-3,
200 steps of 16 random 33-character windows, 1 torch thread (as the test suite runs).

- forgeml: `forgeml.models.gpt.build_gpt` (its explicit causal attention on CPU at this length).
- reference: a plain nanoGPT-style GPT of the same shape written here (`F.scaled_dot_product_
  attention`, the same parameter count), started from the very same weights and fed the very
  same batches, so both do the same arithmetic up to the attention kernel.

Each repeat times both, alternating which goes first; medians over repeats, and the median of
the per-repeat ratios forgeml / reference. Both must learn the pattern (final loss < 0.1).

    .venv/bin/python bench/gpt_tiny_train.py [--repeats 15] [--steps 200]
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from machine import describe, summary, time_pairs
from torch import nn

from forgeml.models.gpt import GPT, GPTConfig, build_gpt

THREADS = 1
TEXT = "forgeml makes models. " * 40
LAYERS, HEADS, EMBD, BLOCK, BATCH, LR = 2, 2, 32, 32, 16, 3e-3


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(EMBD), nn.LayerNorm(EMBD)
        self.qkv, self.proj = nn.Linear(EMBD, 3 * EMBD), nn.Linear(EMBD, EMBD)
        self.fc, self.fc_proj = nn.Linear(EMBD, 4 * EMBD), nn.Linear(4 * EMBD, EMBD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, t, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x))))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, EMBD), nn.Embedding(BLOCK, EMBD)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(EMBD)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # tied output layer


def copy_weights(source: GPT, target: PlainGPT) -> None:
    """The plain model gets forgeml's initial weights, so both start from the same point."""
    names = {"attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc": "fc", "mlp.proj": "fc_proj"}
    state = {}
    for key, value in source.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to wte
        for ours, theirs in names.items():
            key = key.replace(ours, theirs)
        state[key] = value
    target.load_state_dict(state, strict=True)


def train(model: nn.Module, ids: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - BLOCK - 1, (BATCH,), generator=gen)
        window = torch.stack([ids[s : s + BLOCK + 1] for s in starts])  # (B, T + 1)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    load = os.getloadavg()[0]
    chars = sorted(set(TEXT))
    ids = torch.tensor([chars.index(c) for c in TEXT])
    cfg = GPTConfig(n_layer=LAYERS, n_head=HEADS, n_embd=EMBD, block_size=BLOCK)
    losses: dict[str, float] = {}

    def models() -> tuple[GPT, PlainGPT]:
        torch.manual_seed(0)
        ours = build_gpt(cfg, len(chars))
        plain = PlainGPT(len(chars))
        copy_weights(ours, plain)
        return ours, plain

    ours, plain = models()
    counts = [sum(p.numel() for p in m.parameters()) for m in (ours, plain)]
    assert counts[0] == counts[1], counts

    def run_ours() -> None:
        losses["forgeml"] = train(models()[0], ids, args.steps)

    def run_plain() -> None:
        losses["plain"] = train(models()[1], ids, args.steps)

    mine, theirs = time_pairs(run_ours, run_plain, args.repeats)
    assert max(losses.values()) < 0.1, losses  # both learned the pattern
    s = summary(mine, theirs)
    print(describe(THREADS, load))
    print(
        f"{args.steps} steps, batch {BATCH}, context {BLOCK}, {counts[0]:,} parameters; "
        f"{args.repeats} repeats; final loss forgeml {losses['forgeml']:.4f}, "
        f"plain {losses['plain']:.4f}\n"
    )
    print("| case | median s | median ms/step | forgeml / plain (median, range) |")
    print("|---|---|---|---|")
    print(
        f"| forgeml `GPT` | {s['ours']:.3f} | {1e3 * s['ours'] / args.steps:.2f} "
        f"| **{s['ratio']:.2f}** ({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) |"
    )
    print(
        f"| plain PyTorch GPT | {s['theirs']:.3f} | {1e3 * s['theirs'] / args.steps:.2f} | 1.00 |"
    )


if __name__ == "__main__":
    main()
