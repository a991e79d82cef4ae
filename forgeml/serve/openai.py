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
(generation.py), which batches concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from forgeml.errors import ForgeError
from forgeml.serve import codec, protocol
from forgeml.serve.generation import (
    Channel,
    Done,
    Failed,
    Job,
    QueueFull,
    Sampling,
    Scheduler,
    ServedLM,
    ShuttingDown,
    Text,
)
from forgeml.serve.limits import one_line
from forgeml.serve.values import RequestError

MAX_CHOICES = 16  # prompts x n per request
MAX_STOP = 4  # stop strings per request, as OpenAI
MAX_STOP_CHARS = 256
MAX_MESSAGES = 2048
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_STOP = "\nuser:"
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
OWNED_BY = "forgeml"
PROMPT_DROPPED_HEADER = "x-forgeml-prompt-tokens-dropped"
RETRY_AFTER = {"Retry-After": "1"}


# ----------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    """Strict JSON types (no "1" for 1, no 1 for true); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool | None = Field(
        None, description="a last chunk with `usage` and no choices, before [DONE]"
    )


class _Generate(_Body):
    """What completions and chat completions share."""

    model: str = Field(min_length=1, max_length=512, description="a served model's name")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate at most")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy; default 1")
    top_p: float | None = Field(None, ge=0, le=1, description="nucleus sampling; default 1 (off)")
    n: int | None = Field(None, ge=1, le=MAX_CHOICES, description="choices per prompt")
    stream: bool | None = Field(None, description="server-sent events, ending with [DONE]")
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        None, description=f"up to {MAX_STOP} strings that end a choice (not included)"
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="same seed, same text (choice k uses seed + k)"
    )
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="only 0")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="only 0")
    logit_bias: dict[str, Any] | None = Field(None, description="only empty")
    # Accepted and ignored, as they change nothing about the text.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # forgeml extensions (with the openai client: extra_body={...})
    top_k: int | None = Field(None, ge=1, description="extension: sample among the k likeliest")
    repetition_penalty: float | None = Field(
        None, gt=0, le=10, description="extension: CTRL-style, 1 = off"
    )
    truncate_prompt: bool | None = Field(
        None,
        description="extension: false refuses a prompt longer than the context allows (400) "
        "instead of cutting its oldest tokens",
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        items = [stop] if isinstance(stop, str) else stop or []
        if len(items) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        for s in items:
            if not s or len(s) > MAX_STOP_CHARS:
                raise ValueError(f"a stop string has 1 to {MAX_STOP_CHARS} characters")
        return stop


class CompletionRequest(_Generate):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text, a list of texts, token ids, or a list of token-id lists"
    )
    echo: bool | None = Field(None, description="only false")
    logprobs: int | None = Field(None, description="not supported")
    suffix: str | None = Field(None, description="not supported")
    best_of: int | None = Field(None, description="only 1")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    # What the openai client sends back with an assistant message it received.
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: Any = None
    tool_calls: list[Any] | None = Field(None, description="only empty")
    function_call: Any = Field(None, description="not supported")


class ChatRequest(_Generate):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, description="max_tokens' new name")
    logprobs: bool | None = Field(None, description="only false")
    top_logprobs: int | None = Field(None, description="not supported")
    tools: list[Any] | None = Field(None, description="only empty")
    tool_choice: Any = Field(None, description='only "none"')
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = Field(None, description="only empty")
    function_call: Any = Field(None, description='only "none"')
    response_format: dict[str, Any] | None = Field(None, description='only {"type": "text"}')
    modalities: list[str] | None = Field(None, description='only ["text"]')
    audio: Any = Field(None, description="not supported")
    prediction: Any = Field(None, description="not supported")
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: Any = Field(None, description="not supported")


BODY_MODELS: tuple[type[BaseModel], ...] = (CompletionRequest, ChatRequest)


def _unsupported(req: _Generate) -> tuple[str, str] | None:
    """The first parameter set to something this server cannot do: (field, what it allows)."""
    only_default: list[tuple[str, Any, str]] = [
        ("presence_penalty", req.presence_penalty in (None, 0), "only 0"),
        ("frequency_penalty", req.frequency_penalty in (None, 0), "only 0"),
        ("logit_bias", not req.logit_bias, "only empty"),
    ]
    if isinstance(req, CompletionRequest):
        only_default += [
            ("logprobs", req.logprobs is None, "log-probabilities are not returned"),
            ("echo", not req.echo, "only false"),
            ("suffix", req.suffix is None, "insertion is not supported"),
            ("best_of", req.best_of in (None, 1), "only 1; use n for several choices"),
        ]
    else:
        assert isinstance(req, ChatRequest)
        tool_choice_ok = req.tool_choice in (None, "none")
        only_default += [
            ("logprobs", not req.logprobs, "log-probabilities are not returned"),
            ("top_logprobs", req.top_logprobs is None, "log-probabilities are not returned"),
            ("tools", not req.tools, "tool calls are not supported"),
            ("tool_choice", tool_choice_ok, 'tool calls are not supported; only "none"'),
            ("functions", not req.functions, "function calls are not supported"),
            ("function_call", req.function_call in (None, "none"), 'only "none"'),
            ("response_format", req.response_format in (None, {"type": "text"}), "only text"),
            ("modalities", req.modalities in (None, ["text"]), 'only ["text"]'),
            ("audio", req.audio is None, "text only"),
            ("prediction", req.prediction is None, "predicted outputs are not supported"),
            ("web_search_options", req.web_search_options is None, "web search is not supported"),
        ]
        for i, m in enumerate(req.messages):
            if m.tool_calls or m.function_call is not None:
                key = "tool_calls" if m.tool_calls else "function_call"
                return f"messages[{i}].{key}", "tool and function calls are not supported"
    for name, ok, allowed in only_default:
        if not ok:
            return name, allowed
    return None


# ----------------------------------------------------------------------------- errors


class OpenAIError(RequestError):
    """A refusal with OpenAI's `code` (e.g. "context_length_exceeded", "model_not_found")."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, param, headers)
        self.code = code


ERROR_TYPES = {
    401: "authentication_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout",
}


def error_json(status: int, message: str, param: str | None, code: str | None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": one_line(message), "type": kind, "param": param, "code": code}}


def error_response(exc: RequestError) -> JSONResponse:
    code = getattr(exc, "code", None)
    return JSONResponse(
        error_json(exc.status, exc.message, exc.field, code), exc.status, exc.headers or None
    )


def _invalid(field: str, problem: str) -> OpenAIError:
    return OpenAIError(422, f"{field}: {problem}", field)


def validate(model: type[_Generate], document: Any) -> Any:
    """The body as `model`, or a 422 naming the field at fault."""
    if not isinstance(document, dict):
        raise OpenAIError(422, "the body must be a JSON object", "body")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        field, message = _first_error(exc.errors(include_url=False))
        raise _invalid(field, message) from None


_UNION_TAGS = {"str", "int", "float", "bool", "TextPart"}
_UNION_HINTS = {
    "prompt": "expected a string, a list of strings, a list of token ids, or a list of such lists",
    "stop": "expected a string or a list of strings",
    "content": "expected a string or a list of text parts",
}


def _first_error(errors: list[Any]) -> tuple[str, str]:
    """(field, message) for pydantic's errors: the first field at fault; for a value that
    matches no member of a union (prompt, stop, content), the most specific error."""
    first = errors[0]
    if not any(_is_tag(p) for p in first["loc"]):
        field = codec.field_path(tuple(first["loc"])) or "body"
        if first["type"] == "extra_forbidden":
            return field, "unknown parameter (see /openapi.json for the ones this server takes)"
        return field, first["msg"]
    # A union: its errors are grouped under the tags of its members; keep the deepest ones.
    cut = next(i for i, p in enumerate(first["loc"]) if _is_tag(p))
    prefix = tuple(first["loc"][:cut])
    same = [e for e in errors if tuple(e["loc"][:cut]) == prefix and len(e["loc"]) > cut]
    deepest = max(same, key=lambda e: len(e["loc"]))
    loc = tuple(p for p in deepest["loc"] if not _is_tag(p))
    field = codec.field_path(loc) or "body"
    if len(deepest["loc"]) == cut + 1:  # the value itself has the wrong type
        hint = _UNION_HINTS.get(str(prefix[-1]) if prefix else "", deepest["msg"])
        return field, hint
    return field, deepest["msg"]


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in _UNION_TAGS)


# ----------------------------------------------------------------------------- models listing


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the run finished training (Unix seconds)")
    owned_by: str = OWNED_BY
    task: str | None = Field(None, description="extension: the run's task")
    ready: bool | None = Field(None, description="extension: loaded and warmed up")


class ModelListing(protocol.ModelList):
    """GET /v1/models: OpenAI's list (`object`, `data`) and forgeml's own (`models`)."""

    object: Literal["list"] = "list"
    data: list[OpenAIModel]


def model_card(name: str, run_dir: Path, task: str | None, ready: bool) -> dict[str, Any]:
    try:
        created = int((run_dir / "forgeml.json").stat().st_mtime)
    except OSError:
        created = 0
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
        "task": task,
        "ready": ready,
    }


# ----------------------------------------------------------------------------- routes


class ServerState(Protocol):
    """What the routes need of app.py's `Server`."""

    settings: Any
    metrics: Any
    batchers: dict[str, Any]
    generators: dict[str, Scheduler]


def _request_body(model: type) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorBody, "description": text}
    for code, text in {
        400: "invalid JSON; a model that is not a language model; a prompt too long with "
        "truncate_prompt false",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "body too large",
        415: "not JSON",
        422: "a parameter with a wrong type or value, or unsupported; `param` names it",
        429: "queue full; see Retry-After",
        503: "model loading or server stopping",
        504: "no answer (or first token) within --timeout-s",
    }.items()
}
STREAM_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON or SSE"}}


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


@dataclass
class _Prompt:
    ids: list[int]  # fitted to the context
    dropped: int  # tokens cut from the left
    max_tokens: int


async def _generate(server: ServerState, request: Request, *, chat: bool) -> Response:
    started = time.perf_counter()
    body = await request.body()  # BodyLimitMiddleware stops it past --max-body-bytes
    document = codec.parse_json(body, request.headers.get("content-type"))
    req = validate(ChatRequest if chat else CompletionRequest, document)
    if (bad := _unsupported(req)) is not None:
        field, allowed = bad
        raise _invalid(field, f"not supported by this server ({allowed})")
    scheduler = _scheduler(server, req.model)
    name, settings = scheduler.name, server.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.timeout_s
    scheduler.expect()  # an idle scheduler now waits for this request (generation.py)
    try:
        prompts = await run_in_threadpool(_fit_prompts, scheduler.model, req, settings.max_tokens)
        n = req.n or 1
        if len(prompts) * n > MAX_CHOICES:
            raise _invalid(
                "n", f"{len(prompts)} prompts x n={n} is more than {MAX_CHOICES} choices"
            )
        sampling = _sampling(req, chat)
    except BaseException:
        scheduler.unexpect()
        raise
    channel = Channel()
    jobs = [
        Job(
            p.ids,
            p.max_tokens,
            sampling,
            None if req.seed is None else req.seed + k,
            i * n + k,
            channel,
        )
        for i, p in enumerate(prompts)
        for k in range(n)
    ]
    try:
        scheduler.submit(jobs, expected=True)
    except QueueFull:
        server.metrics.rejected.labels(name, "queue_full").inc()
        raise OpenAIError(
            429,
            f"model '{name}' has too many requests waiting (--max-queue {settings.max_queue} "
            "choices); retry after the Retry-After delay",
            None,
            "rate_limit_exceeded",
            RETRY_AFTER,
        ) from None
    except ShuttingDown:
        server.metrics.rejected.labels(name, "shutting_down").inc()
        raise OpenAIError(503, "the server is shutting down") from None
    reply = _Reply(server, scheduler, req, chat, prompts, jobs, channel, started)
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


def _fit_prompts(served: ServedLM, req: Any, cap: int) -> list[_Prompt]:
    """Tokenize the prompt(s) and fit each to the context with its max_tokens (thread pool)."""
    context = served.context_length
    limit = min(cap, context - 1)
    field = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
    asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
    if asked is not None and asked > limit:
        raise _invalid(
            field,
            f"{asked} is more than this server generates per request: at most {limit} (the "
            f"model's context is {context} tokens; the server's --max-tokens is {cap})",
        )
    if isinstance(req, ChatRequest):
        texts: list[tuple[str | list[int], str]] = [(_chat_prompt(req.messages), "messages")]
    elif isinstance(req.prompt, str):
        texts = [(req.prompt, "prompt")]
    elif not req.prompt:
        raise _invalid("prompt", "an empty list; give a text or token ids")
    elif all(isinstance(p, int) for p in req.prompt):
        texts = [(list(req.prompt), "prompt")]
    else:
        texts = [(p, f"prompt[{i}]") for i, p in enumerate(req.prompt)]
    if len(texts) > MAX_CHOICES:
        raise _invalid("prompt", f"{len(texts)} prompts; at most {MAX_CHOICES} per request")
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
        fitted.append(_Prompt(ids[dropped:], dropped, max_tokens))
    return fitted


def _encode(served: ServedLM, prompt: str | list[int], where: str, req: Any) -> list[int]:
    if isinstance(prompt, list):
        vocab = served.vocab_size
        for j, token in enumerate(prompt):
            if not 0 <= token < vocab:
                raise _invalid(
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
            raise _invalid(where, "empty; this model has no end-of-text token to start from")
        ids = start
    return ids


def _encoding_error(served: ServedLM, where: str, exc: ForgeError, req: Any) -> RequestError:
    message = " ".join(str(exc).split())
    if not isinstance(req, ChatRequest):
        return _invalid(where, message)
    for i, m in enumerate(req.messages):  # which message: the template or the user's text?
        try:
            served.encode(_content(m))
        except ForgeError:
            return _invalid(f"messages[{i}].content", message)
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


def _sampling(req: Any, chat: bool) -> Sampling:
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = req.top_p
    if top_p == 0:  # nothing but the likeliest token
        temperature, top_p = 0.0, None
    elif top_p == 1:
        top_p = None
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if chat and CHAT_STOP not in stops:
        stops.append(CHAT_STOP)
    if temperature == 0:  # greedy: the sampling filters change nothing, so they batch alike
        return Sampling(0.0, None, None, req.repetition_penalty or 1.0, tuple(stops))
    return Sampling(temperature, req.top_k, top_p, req.repetition_penalty or 1.0, tuple(stops))


# ----------------------------------------------------------------------------- responses


def _sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


class _Reply:
    """The response to one generation request: events in, OpenAI JSON or SSE chunks out."""

    def __init__(
        self,
        server: ServerState,
        scheduler: Scheduler,
        req: Any,
        chat: bool,
        prompts: list[_Prompt],
        jobs: list[Job],
        channel: Channel,
        started: float,
    ) -> None:
        self.server, self.scheduler, self.req, self.chat = server, scheduler, req, chat
        self.prompts, self.jobs, self.channel, self.started = prompts, jobs, channel, started
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.dropped = sum(p.dropped for p in prompts)
        self.headers = {PROMPT_DROPPED_HEADER: str(self.dropped)}
        self.texts: list[list[str]] = [[] for _ in jobs]
        self.done: dict[int, Done] = {}
        self.first_token = False

    async def next_event(self, timeout_s: float) -> Text | Done | Failed:
        name = self.scheduler.name
        try:
            event = await self.channel.get(timeout_s)
        except TimeoutError:
            self.server.metrics.rejected.labels(name, "timeout").inc()
            raise OpenAIError(
                504,
                f"no {'token' if self.req.stream else 'answer'} within "
                f"{self.server.settings.timeout_s:g} s (--timeout-s); the server is busy or "
                "the request asks for many tokens",
                None,
                "timeout",
            ) from None
        if isinstance(event, Text) and not self.first_token:
            self.first_token = True
            seconds = time.perf_counter() - self.started
            self.server.metrics.time_to_first_token.labels(name).observe(seconds)
        elif isinstance(event, Done):
            self.done[event.index] = event
        elif isinstance(event, Failed):
            error = event.error
            if isinstance(error, RequestError):
                raise error
            if isinstance(error, ForgeError):
                raise OpenAIError(422, " ".join(str(error).split()))
            raise OpenAIError(500, "generation failed; the server log has the details")
        return event

    def usage(self) -> dict[str, int]:
        prompt = sum(len(p.ids) for p in self.prompts)
        completion = sum(d.completion_tokens for d in self.done.values())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_dropped": self.dropped,
        }

    # ------------------------------------------------------------------ whole response

    async def whole(self, deadline: float) -> JSONResponse:
        loop = asyncio.get_running_loop()
        while len(self.done) < len(self.jobs):
            event = await self.next_event(deadline - loop.time())
            if isinstance(event, Text):
                self.texts[event.index].append(event.text)
        choices = []
        for i in range(len(self.jobs)):
            text, reason = "".join(self.texts[i]), self.done[i].finish_reason
            if self.chat:
                message = {"role": "assistant", "content": text, "refusal": None}
                choice = {"index": i, "message": message, "logprobs": None}
            else:
                choice = {"index": i, "text": text, "logprobs": None}
            choices.append(choice | {"finish_reason": reason})
        body = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.scheduler.name,
            "choices": choices,
            "usage": self.usage(),
        }
        return JSONResponse(body, headers=self.headers)

    # ------------------------------------------------------------------ server-sent events

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.scheduler.name,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = None
        return _sse(body | extra)

    @property
    def include_usage(self) -> bool:
        options = self.req.stream_options
        return bool(options is not None and options.include_usage)

    def _choice(self, index: int, text: str | None, reason: str | None) -> dict[str, Any]:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}

    async def sse(self, first: Text | Done | Failed) -> AsyncIterator[bytes]:
        """The chunks: (chat) each choice's role, then text pieces as they come, one chunk with
        each choice's finish_reason, (stream_options.include_usage) a usage chunk, [DONE].

        After the first event, each next one must come within --timeout-s, else the stream
        ends with an error event (the openai client raises it as an APIError).
        """
        timeout = self.server.settings.timeout_s
        try:
            if self.chat:
                for i in range(len(self.jobs)):
                    role = {"role": "assistant", "content": ""}
                    choice = {"index": i, "delta": role, "logprobs": None, "finish_reason": None}
                    yield self._chunk([choice])
            event: Text | Done | Failed = first
            while True:
                if isinstance(event, Text):
                    yield self._chunk([self._choice(event.index, event.text, None)])
                elif isinstance(event, Done):
                    yield self._chunk([self._choice(event.index, None, event.finish_reason)])
                    if len(self.done) == len(self.jobs):
                        break
                try:
                    event = await self.next_event(timeout)
                except RequestError as exc:
                    code = getattr(exc, "code", None)
                    yield _sse(error_json(exc.status, exc.message, exc.field, code))
                    return
            if self.include_usage:
                yield self._chunk([], usage=self.usage())
            yield _sse("[DONE]")
        finally:
            self.scheduler.withdraw(self.channel)
