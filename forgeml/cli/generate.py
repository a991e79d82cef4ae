"""`forgeml generate RUN_DIR --prompt "..." [options]`: stream a language model's text.

cli.py adds the parser with `add_generate_parser(sub)`; nothing heavy is imported until the
command runs, so `forgeml --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXAMPLES = """examples:
  forgeml generate runs/gpt-char --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8
  forgeml generate runs/gpt-bpe --prompt "def main(" --top-p 0.9 --stop "\\n\\n" --seed 1
  echo "To be, or" | forgeml generate runs/gpt-char --prompt -
"""


def add_generate_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="generate text with a trained language model (streams to the terminal)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir")
    p.add_argument("--prompt", default="", help="the text to continue; - reads it from stdin")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="same seed, same text")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--no-prompt", action="store_true", help="print only the generated text")
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    from forgeml.errors import ConfigError
    from forgeml.generation.language_model import LanguageModel

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: expected at least 1")
    lm = LanguageModel.load(args.run_dir, precision=args.precision)
    stream = lm.start(
        [prompt],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
        seed=args.seed,
    )
    dropped = stream.prompt_dropped[0]
    if dropped:
        new = min(args.max_new_tokens, lm.context_length - 1)
        print(
            f"note: the prompt ({stream.prompt_tokens[0]} tokens) and {new} new tokens do not fit "
            f"the context of {lm.context_length} tokens; the prompt's first {dropped} tokens "
            "were left out",
            file=sys.stderr,
        )
    if not args.no_prompt:
        sys.stdout.write(prompt)
    for pieces in stream:
        if pieces[0]:
            sys.stdout.write(pieces[0])
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
