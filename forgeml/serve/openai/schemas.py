"""The OpenAI-compatible request bodies, their checks, and OpenAI's error shape.

Request bodies are pydantic models (`CompletionRequest`, `ChatRequest`): a wrong type, a value
out of range or an unknown parameter is a 422 naming it. Errors use OpenAI's shape,

    {"error": {"message": "temperature: ...", "type": "invalid_request_error",
               "param": "temperature", "code": null}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forgeml.serve.errors import RequestError, one_line
from forgeml.serve.kserve import codec, protocol

MAX_CHOICES = 16  # prompts x n per request


MAX_STOP = 4  # stop strings per request, as OpenAI


MAX_STOP_CHARS = 256


MAX_MESSAGES = 2048


DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


CHAT_STOP = "\nuser:"


CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


OWNED_BY = "forgeml"


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


def unsupported(req: _Generate) -> tuple[str, str] | None:
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


def invalid_param(field: str, problem: str) -> OpenAIError:
    return OpenAIError(422, f"{field}: {problem}", field)


def validate(model: type[_Generate], document: Any) -> Any:
    """The body as `model`, or a 422 naming the field at fault."""
    if not isinstance(document, dict):
        raise OpenAIError(422, "the body must be a JSON object", "body")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        field, message = _first_error(exc.errors(include_url=False))
        raise invalid_param(field, message) from None


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


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    error: ErrorDetail


BODY_MODELS: tuple[type[BaseModel], ...] = (CompletionRequest, ChatRequest)


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
