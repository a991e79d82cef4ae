"""Hypothesis strategies for hostile requests to `forgeml serve`, and the check every response
must pass: a 2xx, or a 4xx with a JSON error body; never a 5xx, never a dropped connection.

Used by the suite (test_bad_requests.py, test_openai.py: a fixed seed, a bounded count) and by
bench/fuzz_serve.py (many more examples, status counts).

Bodies follow the request schemas (OIP v2 infer, :predict instances, OpenAI completions and
chat) with every part open to a wrong value: any JSON document, strings with lone surrogates
(sent as the JSON escapes "\\ud800", which json.loads accepts), integers far beyond 64 bits,
NaN/Infinity tokens, nesting thousands deep, wrong types, missing and unknown keys, bodies cut
short, content types that are not JSON. Each body is written by `dumps` below, which can put
those tokens where Python's json.dumps would refuse to.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from hypothesis import strategies as st
from PIL import Image

# The models of the suite's main server (conftest.py): column -> kind.
MODELS: dict[str, dict[str, str]] = {
    "tabular": {"age": "numeric", "income": "numeric", "color": "category"},
    "digits": {"image": "image"},
    "reviews": {"review": "text"},
    "regression": {"x0": "numeric", "x1": "numeric", "x2": "numeric"},
    "tags": {"x0": "numeric", "x1": "numeric"},
    "waves": {"signal": "sequence"},
}
DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES"]
KSERVE_PATHS = [
    *(f"/v1/models/{m}:predict" for m in MODELS),
    *(f"/v2/models/{m}/infer" for m in MODELS),
]
OPENAI_PATHS = ["/v1/completions", "/v1/chat/completions"]


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is: NaN, Infinity, 1e999, 5000 digits, deep nesting."""

    text: str


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    content: bytes

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        shown = self.content if len(self.content) <= 600 else self.content[:600] + b"..."
        return f"Request({self.path!r}, {self.headers!r}, {shown!r})"


def dumps(value: Any, ascii_only: bool = True, raw: bool = True) -> str:
    """JSON text of `value`; `Raw` tokens as they are, or as null if not `raw` (so that most
    bodies are JSON a parser takes and reach the code behind it)."""
    if isinstance(value, Raw):
        return value.text if raw else "null"
    if isinstance(value, dict):
        items = (f"{dumps(k, ascii_only)}: {dumps(v, ascii_only, raw)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v, ascii_only, raw) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


# ----------------------------------------------------------------------------- values


def chance(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in `one_in` draws. Not `integers(0, n) == 0`: Hypothesis draws the ends
    of a range far more often than the middle, so a rare case at an end would not be rare."""
    return draw(st.integers(0, one_in - 1)) == 1


SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)


LONE = st.tuples(st.text(max_size=6), SURROGATE, st.text(max_size=6)).map("".join)


@st.composite
def _text(draw: st.DrawFn) -> str:
    """Any text; one string in ten with a lone surrogate. Each makes its whole body a 400, so
    more would leave few bodies to reach the code behind the parser; where a server quotes a
    string back (a key, a name, a column's value) LONE is drawn on purpose."""
    return draw(LONE) if chance(draw, 10) else draw(st.text(max_size=12))


TEXT = _text()
NAMED = st.one_of(TEXT, LONE)  # a key or a name the server may quote in its answer
BIG_INTS = [2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 10**400]
INTS = st.one_of(st.integers(-3, 300), st.integers(), st.sampled_from(BIG_INTS))
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SPECIALS = st.sampled_from(
    [Raw(t) for t in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9" * 5000, "1e-400")]
)
DEEP = st.tuples(st.integers(2, 20_000), st.booleans()).map(
    lambda d: Raw("[" * d[0] + "]" * d[0]) if d[1] else Raw('{"a": ' * d[0] + "1" + "}" * d[0])
)
LEAVES = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT, SPECIALS)
ANY = st.one_of(
    st.recursive(
        LEAVES,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)
        ),
        max_leaves=8,
    ),
    DEEP,
)


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


GOOD_IMAGE = _png(np.arange(64, dtype=np.uint8).reshape(8, 8))
IMAGES = st.sampled_from(
    [
        GOOD_IMAGE,
        "data:image/png;base64," + GOOD_IMAGE,
        _png(np.zeros((5000, 5000), dtype=np.uint8)),  # over the pixel limit; a few KB
        _png(np.zeros((1, 1, 4), dtype=np.uint8)),
        base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).decode(),  # a header, no image
        base64.b64encode(b"GIF89a junk").decode(),
        "data:text/plain,hello",
        "%%%not base64%%%",
        "/etc/passwd",
    ]
)
NUMBERS = st.one_of(INTS, FLOATS, st.floats(0, 1), st.integers(0, 255))


def column_value(kind: str) -> st.SearchStrategy[Any]:
    """Mostly a value of the column's kind (good or nearly), sometimes anything."""
    plausible = {
        "numeric": st.one_of(NUMBERS, TEXT, st.sampled_from(["1.5", "nan", "1e999", " "])),
        "category": st.one_of(st.sampled_from(["red", "blue", ""]), NAMED, INTS, FLOATS),
        "text": st.one_of(st.sampled_from(["great phone", "bad", "   "]), NAMED),
        "image": st.one_of(IMAGES, NAMED),
        "sequence": st.one_of(
            st.lists(st.one_of(NUMBERS, LEAVES), max_size=6),
            st.lists(st.lists(NUMBERS, max_size=3), max_size=4),
            st.lists(NUMBERS, max_size=6).map(json.dumps),
            st.sampled_from(["[1, 2]", "[1, 'x']", "[]", "{}", "[[1], [2, 3]]", "[1e999]"]),
        ),
    }[kind]
    return st.one_of(plausible, plausible, ANY)


# ----------------------------------------------------------------------------- bodies


@st.composite
def predict_body(draw: st.DrawFn, model: str) -> Any:
    columns = MODELS[model]

    @st.composite
    def instance(draw: st.DrawFn) -> Any:
        if chance(draw, 10):
            return draw(ANY)
        row = {c: draw(column_value(k)) for c, k in columns.items() if not chance(draw, 10)}
        if chance(draw, 10):
            row[draw(NAMED)] = draw(ANY)
        return row

    body: Any = {"instances": draw(st.lists(instance(), max_size=4))}
    if chance(draw, 10):
        body[draw(st.sampled_from(["instance", "inputs", "extra"]) | TEXT)] = draw(ANY)
    return body


@st.composite
def infer_body(draw: st.DrawFn, model: str) -> Any:
    columns = MODELS[model]
    names = draw(st.lists(st.sampled_from(list(columns)) | NAMED, min_size=0, max_size=4))
    inputs: list[Any] = []
    for name in names:
        kind = columns.get(name, "numeric")
        rows = draw(st.integers(1, 3))
        shape = draw(
            st.one_of(
                st.just([rows]),
                st.just([rows, 1]),
                st.lists(st.integers(-1, 9), max_size=5),  # images: [N, H, W(, C)]
                st.lists(INTS, max_size=5),
                ANY,
            )
        )
        datatype = draw(st.sampled_from(DATATYPES) | TEXT)
        size = int(np.prod(shape)) if _small_shape(shape) else rows
        element = column_value(kind) if datatype == "BYTES" else st.one_of(NUMBERS, LEAVES, ANY)
        data = draw(st.one_of(st.lists(element, min_size=size, max_size=size), ANY))
        tensor = {"name": name, "shape": shape, "datatype": datatype, "data": data}
        for key in draw(st.lists(st.sampled_from(list(tensor)), max_size=1)):
            del tensor[key]
        if chance(draw, 10):
            tensor["parameters"] = draw(ANY)
        inputs.append(tensor)
    body: Any = {"inputs": inputs}
    if chance(draw, 5):
        body["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": st.sampled_from(["prediction", "x"]) | NAMED}))
            | ANY
        )
    if chance(draw, 5):
        body[draw(st.sampled_from(["id", "parameters"]) | TEXT)] = draw(TEXT | ANY)
    return body


def _small_shape(shape: Any) -> bool:
    return (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 16 for d in shape)
        and int(np.prod(shape)) <= 256
    )


def _generation_fields() -> dict[str, st.SearchStrategy[Any]]:
    small = st.one_of(st.integers(-2, 30), INTS, FLOATS, ANY)
    unit = st.one_of(st.floats(-1, 3), INTS, ANY)
    return {
        "max_tokens": small,
        "temperature": unit,
        "top_p": unit,
        "n": small,
        "stream": st.one_of(st.booleans(), ANY),
        "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), ANY),
        "stop": st.one_of(TEXT, st.lists(TEXT, max_size=5), ANY),
        "seed": st.one_of(INTS, ANY),
        "top_k": small,
        "repetition_penalty": unit,
        "truncate_prompt": st.one_of(st.booleans(), ANY),
        "presence_penalty": unit,
        "frequency_penalty": unit,
        "logit_bias": st.one_of(st.dictionaries(TEXT, INTS, max_size=2), ANY),
        "user": st.one_of(TEXT, ANY),
        "metadata": ANY,
    }


# Text a tiny character-level model knows (its corpus: tests/serve/serve_helpers.py), so that
# generated prompts also reach generation, not only the tokenizer's refusal.
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.?:\n", max_size=30)


@st.composite
def completion_body(draw: st.DrawFn, model: str) -> Any:
    prompt = st.one_of(
        WORDS,
        TEXT,
        st.sampled_from(["hello", "the quick brown", ""]),
        st.lists(TEXT, max_size=4),
        st.lists(INTS, max_size=6),
        st.lists(st.lists(st.integers(-1, 40), max_size=6), max_size=3),
        ANY,
    )
    fields = _generation_fields()
    fields |= {"echo": ANY, "logprobs": ANY, "suffix": ANY, "best_of": ANY}
    return draw(_openai_body(model, {"prompt": prompt}, fields))


@st.composite
def chat_body(draw: st.DrawFn, model: str) -> Any:
    part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | TEXT}) | ANY
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | TEXT},
        optional={
            "content": st.one_of(WORDS, TEXT, st.lists(part, max_size=2), st.none(), ANY),
            "name": TEXT | ANY,
            "tool_calls": ANY,
            "refusal": ANY,
        },
    )
    messages = st.one_of(st.lists(message, min_size=1, max_size=3), ANY)
    fields = _generation_fields()
    fields |= {
        key: ANY
        for key in ("max_completion_tokens", "logprobs", "tools", "tool_choice", "response_format")
    }
    return draw(_openai_body(model, {"messages": messages}, fields))


@st.composite
def _openai_body(
    draw: st.DrawFn, model: str, required: dict[str, Any], optional: dict[str, Any]
) -> Any:
    names = st.sampled_from(["tabular", "missing"]) | NAMED | ANY
    name = draw(names) if chance(draw, 4) else model
    body = draw(st.fixed_dictionaries({"model": st.just(name), **required}, optional=optional))
    for key in draw(st.lists(st.sampled_from(list(required) + ["model"]), max_size=1)):
        del body[key]  # a required field missing
    if chance(draw, 10):
        body[draw(NAMED)] = draw(ANY)  # an unknown parameter
    return body


# ----------------------------------------------------------------------------- mutations

GOOD_VALUES = {
    "numeric": 1.5,
    "category": "red",
    "text": "great phone",
    "image": GOOD_IMAGE,
    "sequence": [0.1, 0.4, -0.2],
}
INFER_TYPES = {"numeric": "FP64", "category": "BYTES", "text": "BYTES", "image": "BYTES"}


def good_body(path: str, lm: str = "", dense: bool = False) -> dict[str, Any]:
    """A body the server answers with 200: the start of `mutated`. `dense`: images and
    sequences of an OIP request as tensors of numbers, not strings."""
    if path == "/v1/completions":
        return {"model": lm, "prompt": "hello", "max_tokens": 4}
    if path == "/v1/chat/completions":
        return {"model": lm, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    model = path.split("/")[3].split(":")[0]
    columns = MODELS[model]
    if path.endswith(":predict"):
        return {"instances": [{c: GOOD_VALUES[k] for c, k in columns.items()} for _ in range(2)]}
    inputs = []
    for c, k in columns.items():
        if dense and k == "image":
            pixels = [[0.5] * 8] * 8
            inputs.append({"name": c, "shape": [2, 8, 8], "datatype": "FP32", "data": [pixels] * 2})
        elif dense and k == "sequence":
            inputs.append({"name": c, "shape": [2, 3], "datatype": "FP32", "data": [0.1] * 6})
        else:
            value = json.dumps(GOOD_VALUES[k]) if k == "sequence" else GOOD_VALUES[k]
            datatype = INFER_TYPES.get(k, "BYTES")
            inputs.append({"name": c, "shape": [2], "datatype": datatype, "data": [value, value]})
    return {"inputs": inputs}


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """The path of every node of a document, the root first."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _nodes(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _nodes(item, (*path, i))
    return found


def _value_at(body: Any, path: tuple) -> st.SearchStrategy[Any]:
    """What to put at `path`: a value of the column's kind for a column value, a value of the
    field's kind for a known field, else anything."""
    fields = _generation_fields()
    if len(path) >= 3 and path[0] == "instances" and isinstance(path[2], str):
        for columns in MODELS.values():
            if path[2] in columns:
                return column_value(columns[path[2]])
    if len(path) >= 3 and path[0] == "inputs" and path[2] == "data":
        tensor = body["inputs"][path[1]]
        if tensor.get("datatype") != "BYTES":  # numbers, maybe nested: [N, H, W], [N, L]
            return st.one_of(NUMBERS, st.lists(NUMBERS, max_size=3), LEAVES, ANY)
        kinds = {c: k for columns in MODELS.values() for c, k in columns.items()}
        name = tensor.get("name")  # an earlier mutation may have made it anything
        return column_value(kinds.get(name, "numeric") if isinstance(name, str) else "numeric")
    if len(path) == 1 and path[0] in fields:
        return fields[path[0]]
    return ANY


KNOWN_KEYS = [
    *(c for columns in MODELS.values() for c in columns),
    *("name", "shape", "datatype", "data", "parameters", "id", "outputs"),
    *_generation_fields(),
    *("echo", "logprobs", "best_of", "suffix", "max_completion_tokens", "tools", "tool_calls"),
]


@st.composite
def mutated(draw: st.DrawFn, body: dict[str, Any]) -> Any:
    """`body` with one or two parts changed: a value replaced, a key removed, added or renamed."""
    body = json.loads(json.dumps(body))
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(_nodes(body)))
        if not path:
            return draw(ANY)
        parent = body
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.integers(0, 5))
        key = path[-1]
        if action <= 2:
            parent[key] = draw(_value_at(body, path))
        elif action == 3:
            del parent[key]
        elif isinstance(parent, dict):  # a key added, or one renamed
            new = draw(st.sampled_from(KNOWN_KEYS) | NAMED)
            value = parent.pop(key) if action == 4 else draw(_value_at(body, (new,)))
            parent[new] = value
        else:
            parent.append(draw(_value_at(body, path)))
    return body


# ----------------------------------------------------------------------------- requests

JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/vnd.x+json"]
OTHER_TYPES = ["text/plain", "application/xml", "multipart/form-data; boundary=x", ""]


@st.composite
def requests(draw: st.DrawFn, paths: list[str], lm: str | None = None) -> Request:
    """One request to one of `paths` (KSERVE_PATHS, or OPENAI_PATHS for the model `lm`)."""
    path = draw(st.sampled_from(paths))
    if draw(st.booleans()):  # one or two faults in a good body: each reaches deep
        body = draw(mutated(good_body(path, lm or "", dense=draw(st.booleans()))))
    elif path == "/v1/completions":
        body = draw(completion_body(lm or ""))
    elif path == "/v1/chat/completions":
        body = draw(chat_body(lm or ""))
    else:
        model = path.split("/")[3].split(":")[0]
        body = draw(predict_body(model) if path.endswith(":predict") else infer_body(model))
    if chance(draw, 20):
        body = draw(ANY)  # any document at all
    # Mostly escaped: unescaped, a lone surrogate becomes bytes that are not UTF-8 (400).
    ascii_only = not chance(draw, 5)
    raw = chance(draw, 5)  # NaN, 1e999, deep nesting...: refused by the parser
    # json.loads also takes UTF-16 and UTF-32 (it guesses from the zero bytes)
    utf8 = not chance(draw, 7)
    encoding = "utf-8" if utf8 else draw(st.sampled_from(["utf-16-le", "utf-16", "utf-32"]))
    content = dumps(body, ascii_only, raw).encode(encoding, "surrogatepass")
    if chance(draw, 20):
        content = content[: draw(st.integers(0, max(0, len(content) - 1)))]  # cut short
    other = chance(draw, 20)
    media = draw(st.sampled_from(OTHER_TYPES)) if other else draw(st.sampled_from(JSON_TYPES))
    headers = {"content-type": media} if media else {}
    return Request(path, headers, content)


def client(base_url: str) -> httpx.Client:
    """A new connection per request: a connection the server drops after one answer must not
    be blamed on the next request."""
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.Client(base_url=base_url, timeout=60, limits=limits)


def problem(client: httpx.Client, request: Request) -> tuple[int | None, str | None]:
    """Send `request`: (status or None, what is wrong with the answer or None)."""
    try:
        r = client.post(request.path, content=request.content, headers=request.headers)
    except httpx.TransportError as exc:
        return None, f"no answer: {exc!r}"
    status = r.status_code
    if status >= 500 or not (200 <= status < 300 or 400 <= status < 500):
        return status, f"status {status}: {r.text[:500]}"
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [e for e in r.text.split("\n\n") if e]
        if not events or events[-1] != "data: [DONE]":
            return status, f"a stream that does not end with [DONE]: {events[-2:]}"
        return status, None
    try:
        answer = r.json()
    except ValueError:
        return status, f"status {status} with a body that is not JSON: {r.text[:300]!r}"
    if status >= 400:
        error = answer.get("error") if isinstance(answer, dict) else None
        openai = request.path in OPENAI_PATHS  # OpenAI's shape: {"error": {"message", "param"}}
        message = error.get("message") if openai and isinstance(error, dict) else error
        if not isinstance(message, str) or not message or "\n" in message:
            return status, f"status {status} without a one-line error message: {answer!r:.300}"
        field = error.get("param") if openai else answer.get("field")
        if status == 422 and not field:
            return status, f"a 422 that does not name the field at fault: {answer!r:.300}"
    return status, None
