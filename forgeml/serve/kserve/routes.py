"""The KServe routes: Open Inference Protocol v2 and a friendly `:predict`, over the batcher.

    GET  /v2, /v2/health/live, /v2/health/ready             server metadata and health
    GET  /v2/models/{name}, /v2/models/{name}/ready         model metadata and readiness
    POST /v2/models/{name}/infer                            OIP v2 inference (tensors as JSON)
    POST /v1/models/{name}:predict                          {"instances": [records]} -> predictions

A request's body is read, parsed and checked off the event loop (codec.py, values.py), then
queued for the model's `Batcher`; the time limit starts once the body is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from forgeml import __version__
from forgeml.serve.errors import RequestError
from forgeml.serve.kserve import codec, protocol
from forgeml.serve.kserve.batcher import Batcher
from forgeml.serve.kserve.codec import Locate
from forgeml.serve.worker import QueueFull, ShuttingDown, refusal
from forgeml.tasks.table.serving import ServedModel

RETRY_AFTER = {"Retry-After": "1"}


def routes(server: Any) -> APIRouter:
    """Every KServe route of `server` (app.py's `Server`)."""
    router = APIRouter()
    router.include_router(_oip_routes(server))
    router.include_router(_friendly_routes(server))
    return router


def _post(router: APIRouter, path: str, body: type, response: type) -> Callable:
    """`router.post` for a route that reads its JSON body itself (`body` documents it)."""
    return router.post(path, response_model=response, responses=ERRORS, openapi_extra=_body(body))


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


def _oip_routes(server: Any) -> APIRouter:
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
        return JSONResponse(codec.model_metadata(find_batcher(server, name).model))

    @router.get("/v2/models/{name}/ready", response_model=protocol.ModelReady, responses=ERRORS)
    async def model_ready(name: str) -> JSONResponse:
        ok = server.worker(name).ready
        body = {"name": name, "ready": ok}
        return JSONResponse(body, 200 if ok else 503, None if ok else RETRY_AFTER)

    @_post(router, "/v2/models/{name}/infer", protocol.InferRequest, protocol.InferResponse)
    async def infer(name: str, request: Request) -> JSONResponse:
        """One input tensor per column: BYTES for text and categories (images: base64), FP64
        or INT64 for numbers; N rows each. Outputs: "prediction" [N] and, for
        classification, "probabilities" FP32 [N, C]."""
        (_, _, parsed), rows = await queue_request(server, name, request, _parse_infer)
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


def _friendly_routes(server: Any) -> APIRouter:
    router = APIRouter(tags=["Predict"])

    @_post(router, "/v1/models/{name}:predict", protocol.PredictRequest, protocol.PredictResponse)
    async def predict(name: str, request: Request) -> JSONResponse:
        """Raw values as in the training file: numbers, categories, texts, images as base64
        PNG/JPEG. The same preprocessing as `forgeml predict`."""
        _, rows = await queue_request(server, name, request, _parse_predict)
        return JSONResponse({"predictions": rows})

    return router


def _parse_predict(model: ServedModel, body: bytes, content_type: str | None) -> tuple:
    request = codec.validate(protocol.PredictRequest, codec.parse_json(body, content_type))
    records = codec.instances_to_records(model, request)

    def locate(row: int, column: str) -> str:
        return f"instances[{row}].{column}" if column else f"instances[{row}]"

    result: tuple[list[dict[str, Any]], Locate] = (records, locate)
    return result


async def queue_request(
    server: Any, name: str, request: Request, parse: Callable[[ServedModel, bytes, str | None], Any]
) -> tuple[Any, list[dict[str, Any]]]:
    """Read, parse and check the body off the loop, then queue it for the model's worker.

    The time limit starts once the body is read. Returns what `parse` returned and one
    prediction dict per row.
    """
    try:
        batcher = find_batcher(server, name)
    except RequestError as exc:
        if exc.status == 503:
            server.metrics.rejected.labels(name, "not_ready").inc()
        raise
    batcher.expect()  # a batch being gathered now waits for this request (worker.py)
    try:
        body = await request.body()  # BodyLimitMiddleware stops it past --max-body-bytes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + server.settings.timeout_s
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
    except (QueueFull, ShuttingDown) as exc:
        waiting = f"{server.settings.max_queue} requests"
        status, reason, message = refusal(exc, name, waiting)
        server.metrics.rejected.labels(name, reason).inc()
        headers = RETRY_AFTER if status == 429 else None
        raise RequestError(status, message, headers=headers) from None
    except TimeoutError:
        server.metrics.rejected.labels(name, "timeout").inc()
        raise RequestError(
            504,
            f"no prediction within {server.settings.timeout_s:g} s (--timeout-s); the server "
            "is busy or the request is too large",
        ) from None
    return parsed, rows


def find_batcher(server: Any, name: str, *, need_ready: bool = True) -> Batcher:
    """The batcher serving `name`: 404 for a model not served, 400 for a language model (the
    OpenAI-compatible routes serve it), 503 while it loads."""
    batcher = server.batchers.get(name)
    if name in server.generators:
        raise RequestError(
            400,
            f"model '{name}' is a language model; use POST /v1/completions or "
            "/v1/chat/completions (OpenAI-compatible)",
        )
    if batcher is None:
        served = ", ".join([*server.batchers, *server.generators])
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise RequestError(404, f"model '{shown}' is not served here; models: {served}")
    if need_ready and not batcher.ready:
        raise RequestError(
            503, f"model '{name}' is still loading; retry shortly", headers=RETRY_AFTER
        )
    return batcher
