"""The FastAPI app of `forgeml serve`: routes, lifespan and error responses.

Lifespan: the app starts answering at once (liveness true), while each model's worker thread
loads its run directory and runs one warm-up forward; readiness turns true when every model is
ready. On shutdown uvicorn first stops accepting and waits for the requests in flight (their
batches keep running), then the lifespan stops the workers after their queues are empty.

Routes (every body and error is JSON; errors are `{"error": message, "field"?: where}`, on the
OpenAI routes OpenAI's `{"error": {"message", "type", "param", "code"}}`):

    /v2/..., /v1/models/{name}:predict          KServe (kserve/routes.py), over a `Batcher`
    /v1/completions, /v1/chat/completions       OpenAI-compatible (openai/routes.py), over a
                                                generation `Scheduler`
    GET /v1/models                              the served models (also OpenAI's shape)
    GET /metrics, /openapi.json                 Prometheus metrics, the API document

A served model names its protocol (its task decides); WORKERS gives the worker class of each.
Models are only the run directories given on the command line: no route loads anything named
in a request. More routes plug in as routers (`create_app(..., extra_routers=...)`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect

from forgeml import __version__
from forgeml.serve.errors import RequestError, error_response
from forgeml.serve.kserve import codec, protocol
from forgeml.serve.kserve.batcher import Batcher
from forgeml.serve.kserve.routes import find_batcher
from forgeml.serve.kserve.routes import routes as kserve_routes
from forgeml.serve.limits import ApiKeyMiddleware, BodyLimitMiddleware
from forgeml.serve.metrics import MetricsMiddleware, ServeMetrics
from forgeml.serve.openai.routes import routes as openai_routes
from forgeml.serve.openai.scheduler import Scheduler
from forgeml.serve.openai.schemas import BODY_MODELS as OPENAI_BODIES
from forgeml.serve.openai.schemas import ModelListing, model_card
from forgeml.serve.settings import ServeSettings
from forgeml.serve.worker import Worker

log = logging.getLogger("forgeml.serve")
RETRY_AFTER = {"Retry-After": "1"}


# The routes and the worker class of each protocol a served model can name (its `protocol`).
WORKERS: dict[str, type[Worker]] = {"kserve": Batcher, "openai": Scheduler}


class Server:
    """The state the routes share: one worker per model -- a batcher for the KServe routes, a
    generation scheduler for the OpenAI-compatible ones -- the metrics, the settings."""

    def __init__(
        self,
        settings: ServeSettings,
        models: list[Any],
        on_fatal: Callable[[BaseException], None] | None,
    ) -> None:
        self.settings = settings
        generators = [m.name for m in models if m.protocol == "openai"]
        self.metrics = ServeMetrics([m.name for m in models], generators=generators)
        self.on_fatal = on_fatal
        options = {
            "batching": settings.batching,
            "max_batch_size": settings.max_batch_size,
            "max_delay_s": settings.max_delay_ms / 1000.0,
            "max_queue": settings.max_queue,
            "metrics": self.metrics,
        }
        by_protocol: dict[str, dict[str, Any]] = {protocol: {} for protocol in WORKERS}
        for model in models:
            by_protocol[model.protocol][model.name] = WORKERS[model.protocol](model, **options)
        self.batchers: dict[str, Batcher] = by_protocol["kserve"]
        self.generators: dict[str, Scheduler] = by_protocol["openai"]

    @property
    def workers(self) -> list[Worker]:
        return [*self.batchers.values(), *self.generators.values()]

    @property
    def ready(self) -> bool:
        return all(w.ready for w in self.workers)

    def worker(self, name: str) -> Worker:
        worker = self.batchers.get(name) or self.generators.get(name)
        if worker is None:
            find_batcher(self, name)  # raises the 404
        return worker  # type: ignore[return-value]

    def on_loaded(self, loop: asyncio.AbstractEventLoop) -> Callable:
        def loaded(worker: Worker, error: BaseException | None) -> None:  # on the worker thread
            if error is None:
                self.metrics.model_ready.labels(worker.name).set(1)
                log.info("model %s is ready", worker.name)
            elif self.on_fatal is not None:
                loop.call_soon_threadsafe(self.on_fatal, error)

        return loaded


def create_app(
    settings: ServeSettings,
    models: list[Any],
    *,
    on_fatal: Callable[[BaseException], None] | None = None,
    extra_routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The app serving `models` (checked but not yet loaded: the lifespan loads them).

    `on_fatal(error)` is called on the event loop when a model fails to load. `extra_routers`
    are included after the built-in routes, behind the same API key, body limit and metrics:
    the plug-in point for more protocols (the OpenAI-compatible language-model routes).
    """
    server = Server(settings, models, on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = server.on_loaded(asyncio.get_running_loop())
        for worker in server.workers:
            worker.on_loaded = loaded
            worker.start()
        yield

        # uvicorn has waited for the requests in flight; run anything still queued and stop.
        def close_all() -> None:
            for worker in server.workers:
                worker.close(settings.timeout_s)

        await asyncio.to_thread(close_all)

    app = FastAPI(
        title="forgeml",
        version=__version__,
        description="Predictions from forgeml run directories: Open Inference Protocol v2 "
        "(/v2), a friendly /v1/models/{name}:predict, and OpenAI-compatible /v1/completions "
        "and /v1/chat/completions for language models. See docs/deploying.md.",
        lifespan=lifespan,
        docs_url=None,  # no pages that load scripts from a CDN
        redoc_url=None,
        middleware=[  # outermost first
            Middleware(MetricsMiddleware, metrics=server.metrics),
            Middleware(ApiKeyMiddleware, api_key=settings.api_key),
            Middleware(BodyLimitMiddleware, limit=settings.max_body_bytes),
        ],
    )
    app.state.server = server
    _error_handlers(app)
    app.include_router(kserve_routes(server))
    app.include_router(_listing_routes(server))
    app.include_router(openai_routes(server))
    for router in extra_routers:
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


# ----------------------------------------------------------------------------- routes


def _listing_routes(server: Server) -> APIRouter:
    router = APIRouter(tags=["Operations"])

    @router.get("/v1/models", response_model=ModelListing)
    async def list_models() -> dict[str, Any]:
        """Every served model: `models` (forgeml's shape) and OpenAI's `object`/`data`."""
        models, data = [], []
        for worker in server.workers:
            info: dict[str, Any] = {"name": worker.name, "ready": worker.ready}
            if worker.ready:
                model = worker.model
                inputs = [c.name for c in getattr(model, "columns", [])]
                info |= {"task": model.task, "inputs": inputs}
            models.append(info)
            data.append(
                model_card(worker.name, worker.model.run_dir, info.get("task"), worker.ready)
            )
        return {"models": models, "object": "list", "data": data}

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        body, content_type = server.metrics.render()
        return Response(body, media_type=content_type)

    return router


# ----------------------------------------------------------------------------- errors, OpenAPI


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = "no such route; see /openapi.json"
        elif exc.status_code == 405:
            message = "method not allowed on this route; see /openapi.json"
        headers = dict(exc.headers or {})
        if exc.status_code == 413:
            headers["Connection"] = "close"
        return error_response(exc.status_code, message, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = codec.field_path(tuple(first["loc"])) or "request"
        return error_response(422, f"{field}: {first['msg']}", field)

    @app.exception_handler(ClientDisconnect)
    async def disconnected(_: Request, exc: ClientDisconnect) -> JSONResponse:
        return error_response(400, "the client disconnected before the body was read")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error", exc_info=exc)
        return error_response(500, "internal server error; the server log has the details")


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        # request bodies the routes read themselves
        for model in (*protocol.BODY_MODELS, *OPENAI_BODIES):
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(found.pop("$defs", {}))
            components[model.__name__] = found
        app.openapi_schema = schema
    return app.openapi_schema
