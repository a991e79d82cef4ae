"""The FastAPI app of `forgeml serve`: routes, lifespan and error responses.

Lifespan: the app starts answering at once (liveness true), while each model's worker thread
loads its run directory and runs one warm-up forward; readiness turns true when every model is
ready. On shutdown uvicorn first stops accepting and waits for the requests in flight (their
batches keep running), then the lifespan stops the workers after their queues are empty.

Routes (every body and error is JSON; errors are `{"error": message, "field"?: where}`, on the
OpenAI routes OpenAI's `{"error": {"message", "type", "param", "code"}}`):

    GET  /v2, /v2/health/live, /v2/health/ready             OIP v2 server metadata and health
    GET  /v2/models/{name}, /v2/models/{name}/ready         OIP v2 model metadata and readiness
    POST /v2/models/{name}/infer                            OIP v2 inference (tensors as JSON)
    GET  /v1/models                                         the served models (also OpenAI's shape)
    POST /v1/models/{name}:predict                          {"instances": [records]} -> predictions
    POST /v1/completions, /v1/chat/completions              language models, OpenAI-compatible
                                                            (openai.py; generation.py schedules)
    GET  /metrics, /openapi.json                            Prometheus metrics, the API document

Models are only the run directories given on the command line: no route loads anything named
in a request. More protocols plug in as routers (`create_app(..., extra_routers=...)`); the
OpenAI-compatible routes are one, included by default.
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
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect

from forgeml import __version__
from forgeml.serve import codec, protocol
from forgeml.serve import openai as openai_api
from forgeml.serve.batching import Batcher, QueueFull, ShuttingDown
from forgeml.serve.codec import Locate, RequestError
from forgeml.serve.generation import Scheduler
from forgeml.serve.limits import ApiKeyMiddleware, BodyLimitMiddleware, error_response
from forgeml.serve.metrics import MetricsMiddleware, ServeMetrics
from forgeml.serve.settings import ServeSettings
from forgeml.tasks.table.serving import ServedModel

log = logging.getLogger("forgeml.serve")
RETRY_AFTER = {"Retry-After": "1"}


class Server:
    """The state the routes share: one batcher per predictive model, one generation scheduler
    per language model (generation.py), the metrics, the settings."""

    def __init__(
        self,
        settings: ServeSettings,
        models: list[Any],
        on_fatal: Callable[[BaseException], None] | None,
    ) -> None:
        self.settings = settings
        self.metrics = ServeMetrics(
            [m.name for m in models], generators=[m.name for m in models if m.protocol == "openai"]
        )
        self.on_fatal = on_fatal
        options = {
            "max_batch_size": settings.max_batch_size,
            "max_delay_s": settings.max_delay_ms / 1000.0,
            "max_queue": settings.max_queue,
            "metrics": self.metrics,
        }
        self.batchers = {
            m.name: Batcher(m, merge=settings.batching, **options)  # type: ignore[arg-type]
            for m in models
            if m.protocol == "kserve"
        }
        self.generators = {
            m.name: Scheduler(m, batching=settings.batching, **options)  # type: ignore[arg-type]
            for m in models
            if m.protocol == "openai"
        }

    @property
    def workers(self) -> list[Batcher | Scheduler]:
        return [*self.batchers.values(), *self.generators.values()]

    @property
    def ready(self) -> bool:
        return all(w.ready for w in self.workers)

    def worker(self, name: str) -> Batcher | Scheduler:
        worker = self.batchers.get(name) or self.generators.get(name)
        if worker is None:
            self.batcher(name)  # raises the 404
        return worker  # type: ignore[return-value]

    def batcher(self, name: str, *, need_ready: bool = True) -> Batcher:
        batcher = self.batchers.get(name)
        if name in self.generators:
            raise RequestError(
                400,
                f"model '{name}' is a language model; use POST /v1/completions or "
                "/v1/chat/completions (OpenAI-compatible)",
            )
        if batcher is None:
            served = ", ".join([*self.batchers, *self.generators])
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise RequestError(404, f"model '{shown}' is not served here; models: {served}")
        if need_ready and not batcher.ready:
            raise RequestError(
                503, f"model '{name}' is still loading; retry shortly", headers=RETRY_AFTER
            )
        return batcher

    async def predict(
        self, name: str, request: Request, parse: Callable[[ServedModel, bytes, str | None], Any]
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Read, parse and check the body off the loop, then queue it for the model's worker.

        The time limit starts once the body is read. Returns what `parse` returned and one
        prediction dict per row.
        """
        try:
            batcher = self.batcher(name)
        except RequestError as exc:
            if exc.status == 503:
                self.metrics.rejected.labels(name, "not_ready").inc()
            raise
        batcher.expect()  # a batch being gathered now waits for this request (batching.py)
        try:
            body = await request.body()  # BodyLimitMiddleware stops it past --max-body-bytes
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.timeout_s
            parsed = await run_in_threadpool(
                parse, batcher.model, body, request.headers.get("content-type")
            )
        except BaseException:
            batcher.unexpect()
            raise
        records, locate = parsed[0], parsed[1]
        try:
            remaining = deadline - loop.time()
            if remaining <= 0:
                batcher.unexpect()
                raise TimeoutError
            rows = await batcher.submit(records, locate, remaining, expected=True)
        except QueueFull:
            self.metrics.rejected.labels(name, "queue_full").inc()
            raise RequestError(
                429,
                f"model '{name}' has {self.settings.max_queue} requests waiting (--max-queue); "
                "retry after the Retry-After delay",
                headers=RETRY_AFTER,
            ) from None
        except ShuttingDown:
            self.metrics.rejected.labels(name, "shutting_down").inc()
            raise RequestError(503, "the server is shutting down") from None
        except TimeoutError:
            self.metrics.rejected.labels(name, "timeout").inc()
            raise RequestError(
                504,
                f"no prediction within {self.settings.timeout_s:g} s (--timeout-s); the server "
                "is busy or the request is too large",
            ) from None
        return parsed, rows

    def on_loaded(self, loop: asyncio.AbstractEventLoop) -> Callable:
        def loaded(batcher: Batcher | Scheduler, error: BaseException | None) -> None:  # thread
            if error is None:
                self.metrics.model_ready.labels(batcher.name).set(1)
                log.info("model %s is ready", batcher.name)
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
    app.include_router(_oip_routes(server))
    app.include_router(_friendly_routes(server))
    app.include_router(_ops_routes(server))
    app.include_router(openai_api.routes(server))
    for router in extra_routers:
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


# ----------------------------------------------------------------------------- routes


def _body(model: type) -> dict[str, Any]:
    """OpenAPI request body of a route that reads its JSON itself (see `_openapi`)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": protocol.ErrorBody, "description": text}
    for code, text in {
        400: "invalid JSON",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "body too large",
        415: "not JSON",
        422: "a field or value the model cannot use; `field` says where",
        429: "queue full; see Retry-After",
        503: "model loading or server stopping",
        504: "timed out",
    }.items()
}


def _oip_routes(server: Server) -> APIRouter:
    router = APIRouter(tags=["Open Inference Protocol v2"])

    @router.get("/v2", response_model=protocol.ServerMetadata)
    async def server_metadata() -> dict[str, Any]:
        return {"name": "forgeml", "version": __version__, "extensions": []}

    @router.get("/v2/health/live", response_model=protocol.Live)
    async def live() -> dict[str, Any]:
        return {"live": True}

    @router.get("/v2/health/ready", response_model=protocol.Ready, responses={503: {}})
    async def ready() -> JSONResponse:
        ok = server.ready
        return JSONResponse({"ready": ok}, 200 if ok else 503, None if ok else RETRY_AFTER)

    @router.get("/v2/models/{name}", response_model=protocol.ModelMetadata, responses=ERRORS)
    async def model_metadata(name: str) -> JSONResponse:
        return JSONResponse(codec.model_metadata(server.batcher(name).model))

    @router.get("/v2/models/{name}/ready", response_model=protocol.ModelReady, responses=ERRORS)
    async def model_ready(name: str) -> JSONResponse:
        ok = server.worker(name).ready
        body = {"name": name, "ready": ok}
        return JSONResponse(body, 200 if ok else 503, None if ok else RETRY_AFTER)

    @router.post(
        "/v2/models/{name}/infer",
        response_model=protocol.InferResponse,
        responses=ERRORS,
        openapi_extra=_body(protocol.InferRequest),
    )
    async def infer(name: str, request: Request) -> JSONResponse:
        """One input tensor per column: BYTES for text and categories (images: base64), FP64
        or INT64 for numbers; N rows each. Outputs: "prediction" [N] and, for
        classification, "probabilities" FP32 [N, C]."""
        (_, _, parsed), rows = await server.predict(name, request, _parse_infer)
        outputs = codec.infer_outputs(server.batchers[name].model, rows, parsed.outputs)
        body: dict[str, Any] = {"model_name": name, "outputs": outputs}
        if parsed.id is not None:
            body["id"] = parsed.id
        return JSONResponse(body)

    return router


def _parse_infer(model: ServedModel, body: bytes, content_type: str | None) -> tuple:
    request = codec.validate(protocol.InferRequest, codec.parse_json(body, content_type))
    if request.outputs is not None:  # unknown output names fail before any work is queued
        known = {o["name"] for o in codec.model_metadata(model)["outputs"]}
        for k, out in enumerate(request.outputs):
            if out.name not in known:
                raise codec.invalid(
                    f"outputs[{k}].name",
                    f"unknown output '{out.name}'; this model has: {', '.join(sorted(known))}",
                )
    records, locate = codec.infer_to_records(model, request)
    return records, locate, request


def _friendly_routes(server: Server) -> APIRouter:
    router = APIRouter(tags=["Predict"])

    @router.get("/v1/models", response_model=openai_api.ModelListing, responses=ERRORS)
    async def list_models() -> dict[str, Any]:
        """Every served model: `models` (forgeml's shape) and OpenAI's `object`/`data`."""
        models, data = [], []
        for worker in server.workers:
            info: dict[str, Any] = {"name": worker.name, "ready": worker.ready}
            if worker.ready:
                model = worker.model
                inputs = [c.name for c in model.columns] if isinstance(model, ServedModel) else []
                info |= {"task": model.task, "inputs": inputs}
            models.append(info)
            data.append(
                openai_api.model_card(
                    worker.name, worker.model.run_dir, info.get("task"), worker.ready
                )
            )
        return {"models": models, "object": "list", "data": data}

    @router.post(
        "/v1/models/{name}:predict",
        response_model=protocol.PredictResponse,
        responses=ERRORS,
        openapi_extra=_body(protocol.PredictRequest),
    )
    async def predict(name: str, request: Request) -> JSONResponse:
        """Raw values as in the training file: numbers, categories, texts, images as base64
        PNG/JPEG. The same preprocessing as `forgeml predict`."""
        _, rows = await server.predict(name, request, _parse_predict)
        return JSONResponse({"predictions": rows})

    return router


def _parse_predict(model: ServedModel, body: bytes, content_type: str | None) -> tuple:
    request = codec.validate(protocol.PredictRequest, codec.parse_json(body, content_type))
    records = codec.instances_to_records(model, request)

    def locate(row: int, column: str) -> str:
        return f"instances[{row}].{column}" if column else f"instances[{row}]"

    result: tuple[list[dict[str, Any]], Locate] = (records, locate)
    return result


def _ops_routes(server: Server) -> APIRouter:
    router = APIRouter(tags=["Operations"])

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
        for model in (*protocol.BODY_MODELS, *openai_api.BODY_MODELS):
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(found.pop("$defs", {}))
            components[model.__name__] = found
        app.openapi_schema = schema
    return app.openapi_schema
