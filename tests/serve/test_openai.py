"""The OpenAI-compatible routes on real servers: the official `openai` client unchanged
(models, completions, chat, streaming chat), SSE framing, prompt truncation, malformed bodies
(only 4xx, the field named), overload (429, no 5xx), the API key, readiness, batching, the time
limit (504) and SIGTERM during a stream (the stream completes, exit 0).

A tiny character-level GPT (2 layers, 32 dims, context 32, 30 steps) and a tiny classifier are
trained once for the module; three servers start together:

    open     the LM and the classifier; no API key; --max-tokens 24
    guarded  the LM; API key; --no-batching --max-queue 2
    gated    the LM; loads once a gate file exists; batches of 4 waiting up to 300 ms;
             --timeout-s 5

The guarded and gated servers start through faulty_server.py: while a test's hold file exists,
their streams stop after their first text, so requests stay in flight for as long as the test
needs (no sleeping, no racing a clock).
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fuzz_requests
import httpx
import openai
import pytest
from faulty_server import HELD
from hypothesis import HealthCheck, given, settings
from serve_helpers import (
    API_KEY,
    DRAINING,
    LM,
    LM_CONTEXT,
    TABULAR_ROWS,
    WAIT_TIMEOUT_S,
    ServerProcess,
    metric,
    stop_all,
    train,
    train_lm,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CONTEXT = LM_CONTEXT


@dataclass
class Servers:
    open: ServerProcess
    guarded: ServerProcess
    gated: ServerProcess
    gate: Path  # the gated server loads once this exists
    guarded_hold: Path  # while these exist, the servers' streams stop after their first text
    gated_hold: Path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    out = tmp_path_factory.mktemp("openai-runs")
    logs = tmp_path_factory.mktemp("openai-logs")
    lm = str(train_lm(out))
    # The LM-only servers start (importing torch) while the classifier trains.
    guarded = ServerProcess(
        logs / "guarded.log",
        [lm, "--no-batching", "--max-queue", "2"],
        env={"FORGEML_API_KEY": API_KEY},
        faults=["--hold", str(logs / "guarded-hold")],
    )
    gated = ServerProcess(
        logs / "gated.log",
        [lm, "--max-batch-size", "4", "--max-delay-ms", "300", "--timeout-s", "5"],
        faults=["--load-gate", str(logs / "gate"), "--hold", str(logs / "gated-hold")],
    )
    tabular = train(
        out,
        "tabular",
        {"source": "builtin:tabular?n=300", "target": "label"},
        {"name": "mlp", "hidden_sizes": [8]},
    )
    started = Servers(
        open=ServerProcess(logs / "open.log", [lm, str(tabular), "--max-tokens", "24"]),
        guarded=guarded,
        gated=gated,
        gate=logs / "gate",
        guarded_hold=logs / "guarded-hold",
        gated_hold=logs / "gated-hold",
    )
    yield started
    stop_all([started.open, started.guarded, started.gated])


@pytest.fixture(scope="module")
def open_url(servers: Servers) -> str:
    return servers.open.wait_ready()


@pytest.fixture(scope="module")
def client(open_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{open_url}/v1", api_key="unused", max_retries=0)


# --------------------------------------------------------------------------- the openai client


def test_openai_client_lists_models_and_completes(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {LM, "tabular"} and models[LM].owned_by == "forgeml"

    prompt = "the quick brown"
    first = client.completions.create(model=LM, prompt=prompt, max_tokens=8, temperature=0)
    choice = first.choices[0]
    assert first.object == "text_completion" and first.model == LM and first.id.startswith("cmpl-")
    assert isinstance(choice.text, str) and choice.finish_reason in ("stop", "length")
    assert first.usage.prompt_tokens == len(prompt)  # one token per character
    assert first.usage.completion_tokens <= 8
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    again = client.completions.create(model=LM, prompt=prompt, max_tokens=8, temperature=0)
    assert again.choices[0].text == choice.text  # greedy: the same text, batched or not

    # Two prompts x n=2: four choices, indexed prompt-major.
    many = client.completions.create(
        model=LM, prompt=[prompt, "hello"], n=2, max_tokens=3, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == choice.text[:3]

    # A stop string ends the choice before it (and is not included).
    text = client.completions.create(model=LM, prompt=prompt, max_tokens=20, temperature=0).choices[
        0
    ]
    if len(text.text) >= 4:
        stop = text.text[2:4]
        cut = client.completions.create(
            model=LM, prompt=prompt, max_tokens=20, temperature=0, stop=[stop, "zzz"]
        ).choices[0]
        assert cut.text == text.text[: text.text.find(stop)] and cut.finish_reason == "stop"


def test_chat_and_streaming_chat_with_the_openai_client(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "answer briefly."},
        {"role": "user", "content": "hello there"},
    ]
    chat = client.chat.completions.create(model=LM, messages=messages, max_tokens=10, seed=7)
    message = chat.choices[0].message
    assert chat.object == "chat.completion" and message.role == "assistant"
    assert isinstance(message.content, str) and "\nuser:" not in message.content
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 10
    same = client.chat.completions.create(model=LM, messages=messages, max_tokens=10, seed=7)
    assert same.choices[0].message.content == message.content  # the same seed, the same text

    # A reply sent back as the client received it is a valid message.
    follow = [*messages, chat.choices[0].message, {"role": "user", "content": "and you?"}]
    assert client.chat.completions.create(model=LM, messages=follow, max_tokens=4).choices

    stream = client.chat.completions.create(
        model=LM,
        messages=messages,
        max_tokens=10,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == message.content  # streamed text = the whole answer, same seed
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == chat.choices[0].finish_reason and not any(reasons[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        chat.usage.completion_tokens
    )


def test_completion_stream_is_server_sent_events_ending_with_done(open_url: str) -> None:
    body = {"model": LM, "prompt": "hello", "max_tokens": 5, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{open_url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    text = "".join(c["choices"][0]["text"] for c in chunks)
    whole = httpx.post(f"{open_url}/v1/completions", json=body | {"stream": False}).json()
    assert text == whole["choices"][0]["text"] and len(text) == 5


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_or_refused(
    client: openai.OpenAI,
) -> None:
    prompt = "the quick brown fox jumps over the lazy dog. " * 3  # 135 tokens; context 32
    raw = client.completions.with_raw_response.create(model=LM, prompt=prompt, max_tokens=8)
    completion = raw.parse()
    assert completion.usage.prompt_tokens == CONTEXT - 8
    assert completion.usage.model_extra["prompt_tokens_dropped"] == len(prompt) - (CONTEXT - 8)
    assert raw.headers["x-forgeml-prompt-tokens-dropped"] == str(len(prompt) - (CONTEXT - 8))
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(
            model=LM, prompt=prompt, max_tokens=8, extra_body={"truncate_prompt": False}
        )
    assert refused.value.code == "context_length_exceeded"
    assert "context of 32 tokens" in refused.value.message


# --------------------------------------------------------------------------- bad input


DROP = object()  # a key to remove from the good body
C, CHAT = "completions", "chat/completions"
BAD_BODIES: list[tuple[str, dict[str, Any], int, str]] = [
    # (route, changes to its good body, status, the field named)
    (CHAT, {"messages": DROP}, 422, "messages"),
    (CHAT, {"messages": []}, 422, "messages"),
    (CHAT, {"messages": "hi"}, 422, "messages"),
    (CHAT, {"model": DROP}, 422, "model"),
    (CHAT, {"messages": [{"content": "hi"}]}, 422, "messages[0].role"),
    (CHAT, {"messages": [{"role": "tool", "content": "x"}]}, 422, "messages[0].role"),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        422,
        "messages[0].content[0].type",
    ),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 422, "messages[0].content"),
    (CHAT, {"messages": [{"role": "user", "content": "5€"}]}, 422, "messages[0].content"),
    (CHAT, {"logprobs": True}, 422, "logprobs"),
    (CHAT, {"tools": [{"type": "function"}]}, 422, "tools"),
    (CHAT, {"max_completion_tokens": 10**6}, 422, "max_completion_tokens"),
    (C, {"prompt": DROP}, 422, "prompt"),
    (C, {"prompt": 5}, 422, "prompt"),
    (C, {"prompt": ["a", 1]}, 422, "prompt[1]"),
    (C, {"prompt": [3, 999]}, 422, "prompt[1]"),
    (C, {"prompt": "price: 5€"}, 422, "prompt"),
    (C, {"prompt": []}, 422, "prompt"),
    (C, {"temperature": "hot"}, 422, "temperature"),
    (C, {"temperature": -0.5}, 422, "temperature"),
    (C, {"temperature": 1e308}, 422, "temperature"),
    (C, {"top_p": 1.5}, 422, "top_p"),
    (C, {"max_tokens": "10"}, 422, "max_tokens"),
    (C, {"max_tokens": 0}, 422, "max_tokens"),
    (C, {"max_tokens": 10**30}, 422, "max_tokens"),
    (C, {"max_tokens": 25}, 422, "max_tokens"),  # the server's --max-tokens is 24
    (C, {"max_tokens": 4.5}, 422, "max_tokens"),
    (C, {"n": 0}, 422, "n"),
    (C, {"n": 17}, 422, "n"),
    (C, {"n": 9, "prompt": ["a", "b"]}, 422, "n"),
    (C, {"stream": "yes"}, 422, "stream"),
    (C, {"seed": -1}, 422, "seed"),
    (C, {"stop": ""}, 422, "stop"),
    (C, {"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    (C, {"stop": 3}, 422, "stop"),
    (C, {"logprobs": 2}, 422, "logprobs"),
    (C, {"presence_penalty": 1.0}, 422, "presence_penalty"),
    (C, {"temprature": 0.5}, 422, "temprature"),
    (C, {"model": 7}, 422, "model"),
    (C, {"model": "missing"}, 404, "model"),
    (C, {"model": "tabular"}, 400, "model"),
]
GOOD = {
    C: {"model": LM, "prompt": "hello", "max_tokens": 4},
    CHAT: {"model": LM, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
}


def test_malformed_bodies_get_a_4xx_naming_the_field(open_url: str) -> None:
    http = httpx.Client(timeout=30)
    for route, changes, status, field in BAD_BODIES:
        body = {k: v for k, v in {**GOOD[route], **changes}.items() if v is not DROP}
        r = http.post(f"{open_url}/v1/{route}", json=body)
        assert r.status_code == status, (route, changes, r.text)
        error = r.json()["error"]
        assert error["param"] == field, (route, changes, error)
        assert field.split("[")[0] in error["message"] and error["type"]
    for content, status in [(b"{", 400), (b"", 400), (b"[]", 422), (b'{"model": NaN}', 400)]:
        r = httpx.post(f"{open_url}/v1/completions", content=content, headers=JSON)
        assert r.status_code == status and "message" in r.json()["error"], content
    r = httpx.post(
        f"{open_url}/v1/completions", content=b"prompt=hi", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415
    # The other protocols refuse the language model, and still serve the classifier.
    r = httpx.post(f"{open_url}/v1/models/{LM}:predict", json={"instances": [{"x": 1}]})
    assert r.status_code == 400 and "/v1/completions" in r.json()["error"]
    assert httpx.get(f"{open_url}/v2/models/{LM}").status_code == 400
    assert httpx.get(f"{open_url}/v2/models/{LM}/ready").json() == {"name": LM, "ready": True}
    predict = httpx.post(
        f"{open_url}/v1/models/tabular:predict", json={"instances": TABULAR_ROWS[:2]}
    )
    assert predict.status_code == 200 and len(predict.json()["predictions"]) == 2


JSON = {"content-type": "application/json"}


def test_an_error_message_is_one_line(open_url: str) -> None:
    r = httpx.post(f"{open_url}/v1/completions", json={**GOOD[C], "bad\nkey": 1})
    error = r.json()["error"]
    assert r.status_code == 422 and error["param"] == "bad\nkey"
    assert "\n" not in error["message"] and "bad\\nkey" in error["message"], error


def test_random_malformed_bodies_never_get_a_5xx(open_url: str) -> None:
    """Hypothesis writes completion and chat bodies (fuzz_requests.py); a fixed seed, and at
    most 24 generated tokens per choice (--max-tokens). bench/fuzz_serve.py runs many more."""
    statuses: Counter[int | None] = Counter()
    with fuzz_requests.client(open_url) as client:
        for path in fuzz_requests.OPENAI_PATHS:  # the bodies the mutations start from are good
            r = client.post(path, json=fuzz_requests.good_body(path, LM))
            assert r.status_code == 200, (path, r.text)

        @settings(
            derandomize=True,
            database=None,
            max_examples=300,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(request=fuzz_requests.requests(fuzz_requests.OPENAI_PATHS, LM))
        def answered_well(request: fuzz_requests.Request) -> None:
            status, problem = fuzz_requests.problem(client, request)
            statuses[status] += 1
            assert problem is None, problem

        answered_well()
        assert client.post("/v1/completions", json=GOOD["completions"]).status_code == 200
    assert all(statuses[s] >= 5 for s in (200, 400, 422)), statuses


def test_metrics_count_generated_tokens(open_url: str) -> None:
    before = metric(open_url, "forgeml_generated_tokens_total", model=LM)
    r = httpx.post(f"{open_url}/v1/completions", json=GOOD["completions"]).json()
    after = metric(open_url, "forgeml_generated_tokens_total", model=LM)
    assert after - before == r["usage"]["completion_tokens"] > 0
    text = httpx.get(f"{open_url}/metrics").text
    assert f'forgeml_queue_depth{{model="{LM}"}} 0.0' in text
    assert metric(open_url, "forgeml_time_to_first_token_seconds_count", model=LM) > 0


# --------------------------------------------------------------------------- limits, key


@pytest.fixture(scope="module")
def guarded_url(servers: Servers) -> str:
    return servers.guarded.wait_ready()


def test_api_key_guards_the_openai_routes(guarded_url: str) -> None:
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, guarded_url + path, json=GOOD["completions"], headers=headers)
            assert r.status_code == 401, (path, headers)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded_url}/v1", api_key="wrong").models.list()
    keyed = openai.OpenAI(base_url=f"{guarded_url}/v1", api_key=API_KEY, max_retries=0)
    assert [m.id for m in keyed.models.list()] == [LM]
    chat = keyed.chat.completions.create(
        model=LM, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.choices[0].message.role == "assistant"


def test_overload_gives_429_with_retry_after_and_no_5xx(servers: Servers, guarded_url: str) -> None:
    # One choice at a time, two waiting, and the running one held after its first text: of 16
    # requests at once at most 3 get in, every other one is refused while they wait.
    body = {**GOOD["completions"], "max_tokens": 20}
    url = f"{guarded_url}/v1/completions"
    servers.guarded_hold.touch()
    with ThreadPoolExecutor(16) as pool:
        try:
            posts = [
                pool.submit(httpx.post, url, json=body, headers=AUTH, timeout=60) for _ in range(16)
            ]
            wait_for(lambda: sum(f.done() for f in posts) >= 13, "13 of 16 requests answered")
        finally:
            servers.guarded_hold.unlink(missing_ok=True)
        responses = [f.result() for f in posts]
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 13 and codes.count(200) >= 2, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert metric(guarded_url, "forgeml_rejected_requests_total", AUTH, reason="queue_full") >= 13
    r = httpx.post(url, json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200  # and it recovers


# --------------------------------------------------------------------------- lifecycle


def test_ready_after_loading_batching_timeout_and_sigterm_during_a_stream(
    servers: Servers,
) -> None:
    server, hold = servers.gated, servers.gated_hold  # loads once the gate exists; 5 s limit
    url = server.url
    ready = httpx.get(f"{url}/v2/health/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    r = httpx.post(f"{url}/v1/completions", json=GOOD["completions"])
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "loading" in r.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["ready"] is False
    servers.gate.touch()
    server.wait_ready()

    # Four requests queued while another generates start together: one group of 4 (its
    # --max-batch-size), after the group of the one held.
    def batches() -> tuple[float, float]:
        count = metric(url, "forgeml_batch_requests_count", model=LM)
        return count, metric(url, "forgeml_batch_requests_sum", model=LM)

    def queued() -> float:
        return metric(url, "forgeml_queue_depth", model=LM)

    before = batches()
    completions = f"{url}/v1/completions"
    hold.touch()
    with ThreadPoolExecutor(5) as pool:
        try:
            held = server.log_count(HELD)
            first = {**GOOD["completions"], "max_tokens": 8}
            posts = [pool.submit(httpx.post, completions, json=first, timeout=60)]
            server.wait_for_log(HELD, held + 1)
            bodies = [{**GOOD["completions"], "prompt": p, "temperature": 0} for p in "abcd"]
            posts += [pool.submit(httpx.post, completions, json=b, timeout=60) for b in bodies]
            wait_for(lambda: queued() == 4, "four requests queued behind the held one")
        finally:
            hold.unlink(missing_ok=True)
        responses = [f.result() for f in posts]
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    count, total = batches()
    assert (count - before[0], total - before[1]) == (2, 5)  # groups of 1 and 4 requests

    # Held after its first text, a request cannot finish within --timeout-s: 504.
    hold.touch()
    try:
        slow = httpx.post(completions, json={**GOOD["completions"], "max_tokens": 8}, timeout=60)
    finally:
        hold.unlink(missing_ok=True)
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout", slow.text
    assert httpx.post(completions, json=GOOD["completions"], timeout=60).status_code == 200

    # SIGTERM while a stream is held mid-way: once the server drains, the stream goes on and
    # completes, and the server exits 0.
    body = {**GOOD["chat/completions"], "max_tokens": 20, "stream": True, "temperature": 0}
    held = server.log_count(HELD)
    hold.touch()
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first_line = next(line for line in lines if line)
            assert json.loads(first_line.removeprefix("data: "))["choices"][0]["delta"]["role"]
            server.wait_for_log(HELD, held + 1)
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for_log(DRAINING)
            hold.unlink()
            rest = [line for line in lines if line]
    finally:
        hold.unlink(missing_ok=True)
    assert rest[-1] == "data: [DONE]", rest
    last = json.loads(rest[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert server.proc.wait(WAIT_TIMEOUT_S) == 0, server.log
