"""`ServeSettings`: every option of `forgeml serve`, checked once (no web framework imported)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from forgeml.errors import ForgeError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeSettings:
    run_dirs: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None: no authentication
    max_batch_size: int = 32  # rows merged into one forward
    max_delay_ms: float = 5.0  # how long the first request of a batch waits for others
    batching: bool = True  # False: one request per forward, no waiting
    max_queue: int = 256  # requests waiting per model before 429
    timeout_s: float = 30.0  # parse + queue + inference of one request, else 504
    max_body_bytes: int = 10 * 1024 * 1024  # else 413
    max_tokens: int = 512  # language models: tokens generated per request at most, else 422
    access_log: bool = True
    names: tuple[str, ...] = field(init=False)  # the model name of each run directory

    def __post_init__(self) -> None:
        checks = [
            ("--port", self.port, 0 <= self.port <= 65535, "0..65535 (0: any free port)"),
            ("--max-batch-size", self.max_batch_size, self.max_batch_size >= 1, "at least 1"),
            ("--max-delay-ms", self.max_delay_ms, 0 <= self.max_delay_ms <= 10_000, "0..10000"),
            ("--max-queue", self.max_queue, self.max_queue >= 1, "at least 1"),
            ("--timeout-s", self.timeout_s, 0 < self.timeout_s <= 3600, "above 0, at most 3600"),
            ("--max-body-bytes", self.max_body_bytes, self.max_body_bytes >= 1024, "at least 1024"),
            ("--max-tokens", self.max_tokens, self.max_tokens >= 1, "at least 1"),
        ]
        for option, value, ok, expected in checks:
            if not ok:
                raise ForgeError(f"{option} {value}: expected {expected}")
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


def model_name(run_dir: Path) -> str:
    """The name a run directory is served under: its directory name (`runs/digits` -> digits)."""
    return Path(run_dir).resolve().name
