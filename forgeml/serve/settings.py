"""`ServeSettings`: every option of `forgeml serve`, declared once and checked once.

Each option's flag, help and valid range live on its field (`option(...)`); the command line
(forgeml/cli/serve.py) is built from them. No web framework is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from forgeml.errors import ForgeError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def option(
    default: Any,
    help: str,
    *,
    metavar: str | None = None,
    valid: tuple[Callable[[Any], bool], str] | None = None,
    off_flag: str | None = None,
) -> Any:
    """A field that is a command-line option: `--field-name`, or for a boolean on by default
    the `off_flag` that turns it off; `valid` is (check, what is expected) for numbers."""
    meta = {"help": help, "metavar": metavar, "valid": valid, "off_flag": off_flag}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServeSettings:
    run_dirs: tuple[Path, ...]
    host: str = option("127.0.0.1", "address to bind (default: %(default)s)")
    port: int = option(
        8000,
        "port (default: %(default)s; 0: any)",
        valid=(lambda v: 0 <= v <= 65535, "0..65535 (0: any free port)"),
    )
    api_key: str | None = None  # None: no authentication (cli/serve.py: --api-key or the env)
    max_batch_size: int = option(
        32,
        "rows merged into one forward pass; language models: choices generated together "
        "(default: %(default)s)",
        metavar="ROWS",
        valid=(lambda v: v >= 1, "at least 1"),
    )
    max_delay_ms: float = option(
        5.0,
        "how long a batch waits for more requests (default: %(default)s)",
        metavar="MS",
        valid=(lambda v: 0 <= v <= 10_000, "0..10000"),
    )
    batching: bool = option(
        True,
        "one request per forward pass, no waiting; language models: one choice at a time "
        "(for comparisons)",
        off_flag="--no-batching",
    )
    max_queue: int = option(
        256,
        "requests (language models: choices) waiting per model before 429 (default: %(default)s)",
        metavar="N",
        valid=(lambda v: v >= 1, "at least 1"),
    )
    timeout_s: float = option(
        30.0,
        "per-request time limit after the body is read, else 504; streams: to the first "
        "token, then between tokens (default: %(default)s)",
        metavar="S",
        valid=(lambda v: 0 < v <= 3600, "above 0, at most 3600"),
    )
    max_body_bytes: int = option(
        10 * 1024 * 1024,
        "larger request bodies get 413 (default: %(default)s)",
        metavar="BYTES",
        valid=(lambda v: v >= 1024, "at least 1024"),
    )
    max_tokens: int = option(
        512,
        "language models: tokens generated per request at most (also capped by the "
        "model's context); a larger max_tokens gets 422 (default: %(default)s)",
        metavar="N",
        valid=(lambda v: v >= 1, "at least 1"),
    )
    access_log: bool = option(True, "do not log every request", off_flag="--no-access-log")
    names: tuple[str, ...] = field(init=False)  # the model name of each run directory

    def __post_init__(self) -> None:
        for f in options():
            if f.metadata["valid"] is not None:
                check, expected = f.metadata["valid"]
                value = getattr(self, f.name)
                if not check(value):
                    raise ForgeError(f"{flag(f)} {value}: expected {expected}")
        if self.api_key is not None and (not self.api_key or self.api_key != self.api_key.strip()):
            raise ForgeError(
                "--api-key: the key is empty or has surrounding spaces; pass the exact key"
            )
        if not self.run_dirs:
            raise ForgeError("forgeml serve needs at least one run directory, e.g. runs/NAME")
        names = tuple(model_name(p) for p in self.run_dirs)
        seen: dict[str, Path] = {}
        for name, path in zip(names, self.run_dirs, strict=True):
            if name in seen:
                raise ForgeError(
                    f"{seen[name]} and {path} would both be served as model '{name}' (the model "
                    "name is the directory name); rename or copy one of the run directories"
                )
            seen[name] = path
        object.__setattr__(self, "names", names)

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS


def options() -> list[Any]:
    """The fields of `ServeSettings` that are command-line options, in order."""
    return [f for f in fields(ServeSettings) if "help" in f.metadata]


def flag(f: Any) -> str:
    """The option's command-line flag: --max-batch-size (or its off flag: --no-batching)."""
    return f.metadata["off_flag"] or "--" + f.name.replace("_", "-")


def model_name(run_dir: Path) -> str:
    """The name a run directory is served under: its directory name (`runs/digits` -> digits)."""
    return Path(run_dir).resolve().name
