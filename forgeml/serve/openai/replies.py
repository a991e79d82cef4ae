"""One generation request's answer: scheduler events in, OpenAI JSON or server-sent events out."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi.responses import JSONResponse

from forgeml.errors import ForgeError
from forgeml.serve.errors import RequestError
from forgeml.serve.openai.scheduler import Channel, Done, Failed, Job, Scheduler, Text
from forgeml.serve.openai.schemas import OpenAIError, error_json

PROMPT_DROPPED_HEADER = "x-forgeml-prompt-tokens-dropped"


class ServerState(Protocol):
    """What the routes need of app.py's `Server`."""

    settings: Any
    metrics: Any
    batchers: dict[str, Any]
    generators: dict[str, Scheduler]


@dataclass
class Prompt:
    ids: list[int]  # fitted to the context
    dropped: int  # tokens cut from the left
    max_tokens: int


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


class Reply:
    """The response to one generation request: events in, OpenAI JSON or SSE chunks out."""

    def __init__(
        self,
        server: ServerState,
        scheduler: Scheduler,
        req: Any,
        chat: bool,
        prompts: list[Prompt],
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
        return sse(body | extra)

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
                    yield sse(error_json(exc.status, exc.message, exc.field, code))
                    return
            if self.include_usage:
                yield self._chunk([], usage=self.usage())
            yield sse("[DONE]")
        finally:
            self.scheduler.withdraw(self.channel)
