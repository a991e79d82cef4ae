"""Generation speed of forgeml's GPT: KV cache against none, and against `transformers.generate`.

One GPT-2-small-shaped model (12 layers, 12 heads, 768 dims, context 1024, vocab 50,257;
random weights from a seeded `GPT2Config`) is built as a Hugging Face `GPT2LMHeadModel` and
imported into forgeml's `GPT` (`forgeml.models.gpt_hf.from_hf_gpt2`), so both run the same weights. Each case
greedily generates NEW tokens after a 16-token prompt, batch 1, and reports tokens/s:

- forgeml with its KV cache (`forgeml.generation.sampling.generate`), fp32 and with bf16 weights;
- forgeml without a cache (`use_cache=False`: the whole sequence again at every step), for the
  same number of new tokens (`--no-cache-new` fewer makes it an upper bound of that speed);
- `GPT2LMHeadModel.generate(do_sample=False, use_cache=True)`, fp32 and bf16 weights.

The cases alternate within each repeat; medians over repeats. Greedy tokens of forgeml and
transformers are compared in fp32 (they should be equal).

    .venv/bin/python bench/generation.py [--repeats 3] [--new 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from forgeml.generation.sampling import generate
from forgeml.models.gpt import GPT
from forgeml.models.gpt_hf import from_hf_gpt2

THREADS = 2


def hf_model(dtype: torch.dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    return GPT2LMHeadModel(config).eval().to(dtype)


def time_forgeml(model: GPT, prompt: list[int], new: int, use_cache: bool) -> tuple[float, list]:
    started = time.perf_counter()
    out = generate(model, [prompt], max_new_tokens=new, temperature=0.0, use_cache=use_cache)
    return time.perf_counter() - started, out.tokens[0]


@torch.inference_mode()
def time_hf(model, prompt: list[int], new: int) -> tuple[float, list]:
    ids = torch.tensor([prompt])
    started = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
    return time.perf_counter() - started, out[0, len(prompt) :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--no-cache-new", type=int, default=None, help="default: --new")
    args = parser.parse_args()
    args.no_cache_new = args.no_cache_new or args.new
    torch.set_num_threads(THREADS)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    hf32 = hf_model(torch.float32)
    ours32 = from_hf_gpt2(hf32).eval().prepare_for_generation()
    hf16 = hf_model(torch.bfloat16)
    ours16 = from_hf_gpt2(hf_model(torch.float32)).eval().to(torch.bfloat16)
    ours16.prepare_for_generation()
    prompt = torch.randint(0, 50257, (16,), generator=torch.Generator().manual_seed(1)).tolist()

    cases = {
        "forgeml fp32, KV cache": lambda: time_forgeml(ours32, prompt, args.new, True),
        "forgeml bf16 weights, KV cache": lambda: time_forgeml(ours16, prompt, args.new, True),
        "transformers generate fp32": lambda: time_hf(hf32, prompt, args.new),
        "transformers generate bf16 weights": lambda: time_hf(hf16, prompt, args.new),
        "forgeml fp32, no cache": lambda: time_forgeml(ours32, prompt, args.no_cache_new, False),
    }
    tokens = {name: args.no_cache_new if "no cache" in name else args.new for name in cases}
    # Warm-up: allocation, oneDNN kernel selection.
    time_forgeml(ours32, prompt, 4, True)
    time_forgeml(ours16, prompt, 4, True)
    time_hf(hf32, prompt, 4)
    time_hf(hf16, prompt, 4)

    rates: dict[str, list[float]] = {name: [] for name in cases}
    outputs = {}
    load = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        order = list(cases)
        order = order[repeat % len(order) :] + order[: repeat % len(order)]
        for name in order:
            seconds, out = cases[name]()
            rates[name].append(tokens[name] / seconds)
            outputs[name] = out
    load.append(os.getloadavg()[0])

    same = outputs["forgeml fp32, KV cache"] == outputs["transformers generate fp32"]
    med = {name: statistics.median(values) for name, values in rates.items()}
    base = med["transformers generate fp32"]
    print(
        f"torch {torch.__version__}, {THREADS} threads, load average {load[0]:.1f} -> {load[1]:.1f}"
    )
    print(f"{args.new} new tokens after a 16-token prompt, greedy, batch 1; {args.repeats} repeats")
    print(f"greedy tokens equal (forgeml fp32 vs transformers fp32): {same}\n")
    print("| case | new tokens | tokens/s (median) | range | vs transformers fp32 |")
    print("|---|---|---|---|---|")
    for name, values in rates.items():
        print(
            f"| {name} | {tokens[name]} | {med[name]:.1f} | {min(values):.1f}-{max(values):.1f} "
            f"| {med[name] / base:.2f}x |"
        )
    print(
        f"\nKV cache vs no cache (fp32): {med['forgeml fp32, KV cache'] / med['forgeml fp32, no cache']:.1f}x "
        f"(no-cache rate measured over {args.no_cache_new} tokens; target >= 5x)"
    )
    print(
        "forgeml bf16 vs transformers fp32: "
        f"{med['forgeml bf16 weights, KV cache'] / base:.2f}x; vs transformers bf16: "
        f"{med['forgeml bf16 weights, KV cache'] / med['transformers generate bf16 weights']:.2f}x"
    )


if __name__ == "__main__":
    main()
