"""`forgeml train CONFIG` and `forgeml validate CONFIG`: parsers and bodies (they call forgeml.api)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def add_train_parsers(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model from a config; writes runs/NAME")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_epochs=5")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N processes: launches torchrun (DDP; gloo on CPU, NCCL on GPU)",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="with --nproc: restart a failed job up to K times, resuming from its checkpoint",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue the run from its newest valid checkpoint, or from CHECKPOINT",
    )

    add_trust_pickle(p)

    p = sub.add_parser("validate", help="check a config and its data without training")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    add_trust_pickle(p)


def add_trust_pickle(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help=(
            "model.name=pretrained: also load pickle-only weights (pytorch_model.bin), which can "
            "run code when loaded; only for checkpoints you trust (same as model.trust_pickle=true)"
        ),
    )


def cmd_train(args: argparse.Namespace) -> int:
    from forgeml.api import train
    from forgeml.training.loop import Interrupted

    resume = args.resume
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        args.overrides.append(resume)  # `--resume a.b=1`: an override, not a checkpoint path
        resume = True
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from forgeml.training.distributed import launch

        argv = ["train", args.config, *args.overrides]
        argv += ["--quiet"] if args.quiet else []
        argv += [] if resume is None else ["--resume"] + ([] if resume is True else [str(resume)])
        from forgeml.config import load_config

        load_config(args.config, args.overrides)  # a config mistake: one line, before any rank
        return launch(
            args.nproc, (["--debug"] if args.debug else []) + argv, max_restarts=args.max_restarts
        )
    try:
        train(args.config, args.overrides, quiet=args.quiet, resume=resume)
    except Interrupted as exc:
        # Name the actual config in the how-to-resume hint.
        raise Interrupted(str(exc).replace("CONFIG", args.config), exc.exit_code - 128) from None
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from forgeml.api import validate

    console = Console()
    summary = validate(
        args.config, args.overrides, log=lambda msg: console.print(msg, highlight=False)
    )
    console.print(f"ok: {args.config} is valid; {summary}", highlight=False)
    return 0
