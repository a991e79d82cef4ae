"""`forgeml serve RUN_DIR [RUN_DIR ...]`: the command, and `python -m forgeml.cli.serve`.

`add_serve_parser(subparsers)` and `cmd_serve(args)` plug into forgeml/cli/; importing this
module imports no web framework, so the core CLI works without the `serve` extra.

Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT: stop accepting, finish the requests in
flight, exit), 2 for a user error (bad option, a directory that is not a finished run, a run
that fails to load, the port in use), as every forgeml command.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from forgeml.cli.common import new_parser, run
from forgeml.errors import ForgeError
from forgeml.serve.settings import ServeSettings, flag, options

API_KEY_ENV = "FORGEML_API_KEY"
EXAMPLES = """examples:
  forgeml serve runs/digits-cnn
  forgeml serve runs/digits-cnn runs/churn-mlp --port 8080 --max-batch-size 64
  forgeml serve runs/gpt-char --max-tokens 256     # OpenAI-compatible /v1/chat/completions
  FORGEML_API_KEY=s3cret forgeml serve runs/digits-cnn --host 0.0.0.0
"""


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `serve` to the `forgeml` subcommands (`subparsers` from add_subparsers())."""
    p = subparsers.add_parser(
        "serve",
        help="serve run directories over HTTP (needs the serve extra)",
        description="Serve trained run directories over HTTP: Open Inference Protocol v2 "
        "under /v2, raw records at /v1/models/NAME:predict, OpenAI-compatible "
        "/v1/completions and /v1/chat/completions for language models, Prometheus /metrics. "
        "The model name is the run directory's name.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(p)
    return p


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The run directories, `--api-key`, and every option `ServeSettings` declares."""
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to serve")
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on every route but /v2/health/* "
        f"(default: ${API_KEY_ENV} if set; prefer it, a command line is visible to other users)",
    )
    for f in options():
        meta = f.metadata
        if meta["off_flag"]:
            p.add_argument(meta["off_flag"], dest=f.name, action="store_false", help=meta["help"])
        else:
            kind = f.type if callable(f.type) else {"int": int, "float": float}.get(f.type, str)
            p.add_argument(
                flag(f), type=kind, default=f.default, metavar=meta["metavar"], help=meta["help"]
            )


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServeSettings(
        run_dirs=tuple(Path(p) for p in args.run_dirs),
        api_key=api_key,
        **{f.name: getattr(args, f.name) for f in options()},
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT; 0 after a clean shutdown."""
    if threading.current_thread() is not threading.main_thread():
        return _serve(args)
    # Until uvicorn takes the signal over, a SIGTERM (nothing in flight yet) ends cleanly.
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        return _serve(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ForgeError(
            f"forgeml serve needs the serve extra ({exc.name} is not installed); install it "
            "with: pip install 'forgeml[serve]'"
        ) from None
    from forgeml.serve.app import create_app
    from forgeml.tasks import task_for_run

    # Every directory is checked before the port is bound: a typo fails at once, exit 2.
    models = [
        task_for_run(p).served(p, n) for p, n in zip(settings.run_dirs, settings.names, strict=True)
    ]
    if not settings.is_loopback and settings.api_key is None:
        print(
            f"warning: serving on {settings.host} without an API key: anyone who can reach "
            f"this address can use the models; set {API_KEY_ENV} or --api-key",
            file=sys.stderr,
        )
    fatal: list[BaseException] = []
    server: Any = None

    def on_fatal(error: BaseException) -> None:  # a model failed to load: stop, exit 2
        fatal.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, models, on_fatal=on_fatal)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["forgeml.serve"] = {"handlers": ["default"], "level": "INFO"}
    config = uvicorn.Config(
        app,
        log_config=log_config,
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
        # Requests in flight get their whole time limit to finish after SIGTERM.
        timeout_graceful_shutdown=settings.timeout_s + 5,
        server_header=False,
        log_level="info",
    )
    server = _make_server(config, settings.names)
    try:
        server.run()
    except SystemExit as exc:
        if exc.code in (0, None):  # _exit_cleanly
            return 0
        raise ForgeError(  # uvicorn exits like this when it cannot bind
            f"could not start the server on {settings.host}:{settings.port} (see the log "
            "above: port in use or address not available); pick another --port or --host"
        ) from exc
    if fatal:
        error = fatal[0]
        if isinstance(error, ForgeError):
            raise error
        raise ForgeError(f"a model failed to load: {type(error).__name__}: {error}") from error
    return 0


def _exit_cleanly(_sig: int, _frame: Any) -> None:
    sys.exit(0)


def _make_server(config: Any, names: tuple[str, ...]) -> Any:
    """A uvicorn.Server that ends with exit code 0 after a SIGTERM/SIGINT shutdown, and says
    where it listens (the real port, also for --port 0)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn's own version re-raises the signal after the graceful shutdown, which
            # would end the process by that signal (exit -15); a completed shutdown is a success.
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def on_signal(sig: int, _frame: Any) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C: stop waiting for requests
                self.should_exit = True

            signals = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, on_signal) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                port = self.servers[0].sockets[0].getsockname()[1]
                host = config.host if ":" not in config.host else f"[{config.host}]"
                print(
                    f"forgeml serve: listening on http://{host}:{port} "
                    f"(models: {', '.join(names)}; ready once loaded: GET /v2/health/ready)",
                    file=sys.stderr,
                    flush=True,
                )

    return Server(config)


def main(argv: list[str] | None = None) -> int:
    """`python -m forgeml.cli.serve RUN_DIR ...`: the same as `forgeml serve RUN_DIR ...`."""
    parser = new_parser("forgeml serve", "Serve forgeml run directories over HTTP.", EXAMPLES)
    add_serve_arguments(parser)
    return run(cmd_serve, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
