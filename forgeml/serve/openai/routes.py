"""OpenAI-compatible routes for language-model runs; the official `openai` client works unchanged.

    GET  /v1/models                   every served model, in OpenAI's list shape (app.py; the
                                      same body keeps forgeml's own "models" key)
    POST /v1/completions              prompt(s) -> text; `stream: true` for server-sent events
    POST /v1/chat/completions         messages -> one assistant message; `stream: true` too

Request bodies are pydantic models (`CompletionRequest`, `ChatRequest`): a wrong type, a value
out of range or an unknown parameter is a 422 naming it. Errors use OpenAI's shape,

    {"error": {"message": "temperature: ...", "type": "invalid_request_error",
               "param": "temperature", "code": null}}

Chat has no model-specific template (char/BPE models trained here have none); the prompt is

    system: {content}\\nuser: {content}\\nassistant: {content}\\n...user: {content}\\nassistant:

and generation stops at "\\nuser:" (besides the request's own `stop`).

Limits: `max_tokens` is at most `--max-tokens` and the model's context - 1 (else 422). A prompt
that does not fit the context with `max_tokens` is cut from the left (its oldest tokens), and
the number cut is in `usage.prompt_tokens_dropped` and the `x-forgeml-prompt-tokens-dropped`
header; `"truncate_prompt": false` refuses such a prompt instead (400,
code "context_length_exceeded"). Generation itself runs on the model's scheduler thread
(scheduler.py), which batches concurrent requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from forgeml.errors import ForgeError
from forgeml.serve.errors import RequestError
from forgeml.serve.kserve import codec
from forgeml.serve.openai.replies import Prompt, Reply, ServerState
from forgeml.serve.openai.scheduler import (
    Channel,
    Job,
    QueueFull,
    SamplingParams,
    Scheduler,
    ServedLM,
    ShuttingDown,
)
from forgeml.serve.openai.schemas import (
    CHAT_ROLES,
    CHAT_STOP,
    DEFAULT_COMPLETION_TOKENS,
    ERRORS,
    MAX_CHOICES,
    STREAM_RESPONSE,
    ChatRequest,
    CompletionRequest,
    Message,
    OpenAIError,
    error_response,
    invalid_param,
    unsupported,
    validate,
)
from forgeml.serve.worker import refusal

RETRY_AFTER = {"Retry-After": "1"}


# ----------------------------------------------------------------------------- routes


def _request_body(model: type) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def routes(server: ServerState) -> APIRouter:
    router = APIRouter(tags=["OpenAI-compatible"])

    @router.post(
        "/v1/completions",
        responses={**ERRORS, **STREAM_RESPONSE},
        openapi_extra=_request_body(CompletionRequest),
    )
    async def completions(request: Request) -> Response:
        """Continue `prompt`. Also `n`, `stop`, `seed`, `stream`, and the extensions `top_k`,
        `repetition_penalty`, `truncate_prompt`."""
        return await _guard(lambda: _generate(server, request, chat=False))

    @router.post(
        "/v1/chat/completions",
        responses={**ERRORS, **STREAM_RESPONSE},
        openapi_extra=_request_body(ChatRequest),
    )
    async def chat_completions(request: Request) -> Response:
        """Answer `messages` as "assistant", through the plain-text chat template (see
        docs/deploying.md)."""
        return await _guard(lambda: _generate(server, request, chat=True))

    return router


async def _guard(call: Callable[[], Awaitable[Response]]) -> Response:
    try:
        return await call()
    except RequestError as exc:
        return error_response(exc)


def _not_found(server: ServerState, name: str) -> OpenAIError:
    shown = name if len(name) <= 80 else name[:77] + "..."
    served = ", ".join([*server.generators, *server.batchers]) or "none"
    return OpenAIError(
        404, f"model '{shown}' is not served here; models: {served}", "model", "model_not_found"
    )


def _scheduler(server: ServerState, name: str) -> Scheduler:
    scheduler = server.generators.get(name)
    if scheduler is None:
        if name in server.batchers:
            raise OpenAIError(
                400,
                f"model '{name}' is not a language model; send its inputs to "
                f"POST /v1/models/{name}:predict",
                "model",
                "model_not_supported",
            )
        raise _not_found(server, name)
    if not scheduler.ready:
        server.metrics.rejected.labels(name, "not_ready").inc()
        raise OpenAIError(
            503, f"model '{name}' is still loading; retry shortly", None, None, RETRY_AFTER
        )
    return scheduler


async def _generate(server: ServerState, request: Request, *, chat: bool) -> Response:
    started = time.perf_counter()
    body = await request.body()  # BodyLimitMiddleware stops it past --max-body-bytes
    document = codec.parse_json(body, request.headers.get("content-type"))
    req = validate(ChatRequest if chat else CompletionRequest, document)
    if (bad := unsupported(req)) is not None:
        field, allowed = bad
        raise invalid_param(field, f"not supported by this server ({allowed})")
    scheduler = _scheduler(server, req.model)
    name, settings = scheduler.name, server.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.timeout_s
    scheduler.expect()  # an idle scheduler now waits for this request (worker.py)
    try:
        prompts = await run_in_threadpool(_fit_prompts, scheduler.model, req, settings.max_tokens)
        n = req.n or 1
        if len(prompts) * n > MAX_CHOICES:
            raise invalid_param(
                "n", f"{len(prompts)} prompts x n={n} is more than {MAX_CHOICES} choices"
            )
        params, stop = _sampling(req, chat)
    except BaseException:
        scheduler.unexpect()
        raise
    channel = Channel()
    jobs = [
        Job(
            p.ids,
            replace(
                params, max_new_tokens=p.max_tokens, seed=None if req.seed is None else req.seed + k
            ),
            stop,
            i * n + k,
            channel,
        )
        for i, p in enumerate(prompts)
        for k in range(n)
    ]
    try:
        scheduler.submit(jobs, expected=True)
    except (QueueFull, ShuttingDown) as exc:
        status, reason, message = refusal(exc, name, f"{settings.max_queue} choices")
        server.metrics.rejected.labels(name, reason).inc()
        limited = status == 429
        code, headers = ("rate_limit_exceeded", RETRY_AFTER) if limited else (None, None)
        raise OpenAIError(status, message, None, code, headers) from None
    reply = Reply(server, scheduler, req, chat, prompts, jobs, channel, started)
    if not req.stream:
        try:
            return await reply.whole(deadline)
        finally:
            scheduler.withdraw(channel)
    try:  # the first event before any byte is sent: a timeout can still be a 504
        first = await reply.next_event(deadline - loop.time())
    except BaseException:
        scheduler.withdraw(channel)
        raise
    headers = {**reply.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(reply.sse(first), media_type="text/event-stream", headers=headers)


def _fit_prompts(served: ServedLM, req: Any, cap: int) -> list[Prompt]:
    """Tokenize the prompt(s) and fit each to the context with its max_tokens (thread pool)."""
    context = served.context_length
    limit = min(cap, context - 1)
    field = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if asked is not None and asked > limit:
        raise invalid_param(
            field,
            f"{asked} is more than this server generates per request: at most {limit} (the "
            f"model's context is {context} tokens; the server's --max-tokens is {cap})",
        )
    if isinstance(req, ChatRequest):
        texts: list[tuple[str | list[int], str]] = [(_chat_prompt(req.messages), "messages")]
    elif isinstance(req.prompt, str):
        texts = [(req.prompt, "prompt")]
    elif not req.prompt:
        raise invalid_param("prompt", "an empty list; give a text or token ids")
    elif all(isinstance(p, int) for p in req.prompt):
        texts = [(list(req.prompt), "prompt")]
    else:
        texts = [(p, f"prompt[{i}]") for i, p in enumerate(req.prompt)]
    if len(texts) > MAX_CHOICES:
        raise invalid_param("prompt", f"{len(texts)} prompts; at most {MAX_CHOICES} per request")
    fitted = []
    for prompt, where in texts:
        ids = _encode(served, prompt, where, req)
        if asked is not None:
            max_tokens = asked
        elif isinstance(req, ChatRequest):  # the rest of the context, at least a quarter of it
            max_tokens = min(limit, max(context - len(ids), context // 4, 1))
        else:
            max_tokens = min(limit, DEFAULT_COMPLETION_TOKENS)
        dropped = max(0, len(ids) - (context - max_tokens))
        if dropped and req.truncate_prompt is False:
            raise OpenAIError(
                400,
                f"{where}: {len(ids)} prompt tokens and max_tokens {max_tokens} exceed the "
                f"model's context of {context} tokens; shorten the prompt, lower max_tokens, or "
                "leave truncate_prompt on to cut the prompt's oldest tokens",
                where,
                "context_length_exceeded",
            )
        fitted.append(Prompt(ids[dropped:], dropped, max_tokens))
    return fitted


def _encode(served: ServedLM, prompt: str | list[int], where: str, req: Any) -> list[int]:
    if isinstance(prompt, list):
        vocab = served.vocab_size
        for j, token in enumerate(prompt):
            if not 0 <= token < vocab:
                raise invalid_param(
                    f"{where}[{j}]", f"token id {token} is not in the vocabulary (0..{vocab - 1})"
                )
        ids = list(prompt)
    else:
        try:
            ids = served.encode(prompt)
        except ForgeError as exc:
            raise _encoding_error(served, where, exc, req) from None
    if not ids:
        start = served.start_ids()
        if start is None:
            raise invalid_param(where, "empty; this model has no end-of-text token to start from")
        ids = start
    return ids


def _encoding_error(served: ServedLM, where: str, exc: ForgeError, req: Any) -> RequestError:
    message = " ".join(str(exc).split())
    if not isinstance(req, ChatRequest):
        return invalid_param(where, message)
    for i, m in enumerate(req.messages):  # which message: the template or the user's text?
        try:
            served.encode(_content(m))
        except ForgeError:
            return invalid_param(f"messages[{i}].content", message)
    return OpenAIError(
        400,
        "this model cannot encode the chat template ('system: ...', 'user: ...', "
        f"'assistant:' lines): {message}; use /v1/completions with a prompt in its alphabet",
        "messages",
        "chat_template_unsupported",
    )


def _content(message: Message) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part.text for part in message.content)


def _chat_prompt(messages: list[Message]) -> str:
    """The plain-text chat template (see the module docstring)."""
    lines = [f"{CHAT_ROLES[m.role]}: {_content(m)}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def _sampling(req: Any, chat: bool) -> tuple[SamplingParams, tuple[str, ...]]:
    """The request's sampling settings (max_new_tokens and seed are set per choice) and stop
    strings."""
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = req.top_p
    if top_p == 0:  # nothing but the likeliest token
        temperature, top_p = 0.0, None
    elif top_p == 1:
        top_p = None
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if chat and CHAT_STOP not in stops:
        stops.append(CHAT_STOP)
    penalty = req.repetition_penalty or 1.0
    if temperature == 0:  # greedy: the sampling filters change nothing, so they batch alike
        return SamplingParams(temperature=0.0, repetition_penalty=penalty), tuple(stops)
    params = SamplingParams(temperature=temperature, top_k=req.top_k, top_p=top_p)
    return replace(params, repetition_penalty=penalty), tuple(stops)


# ----------------------------------------------------------------------------- responses
