"""Malformed requests get a 4xx with a JSON error (naming the field where there is one), never a
5xx, and the server keeps serving; bodies over the limit get 413 before they are read."""

from __future__ import annotations

import base64
import io
import json
import os
import random
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import TABULAR_ROWS, digit_images, png_base64

JSON = {"content-type": "application/json"}


def good_bodies() -> dict[str, dict[str, Any]]:
    """One good body per (route, model), the starting point of every mutation."""
    image = png_base64(digit_images(1)[0])
    return {
        "/v1/models/tabular:predict": {"instances": [dict(r) for r in TABULAR_ROWS[:3]]},
        "/v1/models/digits:predict": {"instances": [{"image": image}, {"image": image}]},
        "/v1/models/reviews:predict": {"instances": [{"review": "great phone"}, {"review": "bad"}]},
        "/v1/models/regression:predict": {"instances": [{"x0": 0.1, "x1": 0.2, "x2": 0.3}]},
        "/v2/models/tabular/infer": {
            "inputs": [
                {"name": "age", "shape": [2], "datatype": "FP64", "data": [30.0, 40.0]},
                {"name": "income", "shape": [2], "datatype": "INT64", "data": [40000, 50000]},
                {"name": "color", "shape": [2], "datatype": "BYTES", "data": ["red", "blue"]},
            ]
        },
        "/v2/models/digits/infer": {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}]
        },
        "/v1/models/waves:predict": {"instances": [{"signal": [0.1, 0.4, -0.2]}]},
        "/v2/models/waves/infer": {
            "inputs": [{"name": "signal", "shape": [1], "datatype": "BYTES", "data": ["[1, 2]"]}]
        },
        "/v2/models/reviews/infer": {
            "inputs": [{"name": "review", "shape": [1], "datatype": "BYTES", "data": ["good"]}]
        },
    }


def _png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")  # compresses to a few KB
    return base64.b64encode(buffer.getvalue()).decode()


NUMBER_BAD: list[Any] = [
    *(None, True, False, [], [1, 2], {}, {"a": 1}, "", "   ", "abc", "NaN", "1e999", "0x10"),
    *(-1e39, 1e300, 10**400, "x" * 5000),  # json.dumps writes all 401 digits of 10**400
]
CATEGORY_BAD: list[Any] = [None, [], {}, [1], {"a": 1}, float("nan")]  # NaN: not JSON -> 400
TEXT_BAD: list[Any] = [None, 3, 1.5, True, [], {}, {"text": "hi"}, "", "   "]
IMAGE_BAD: list[Any] = [
    *(None, 3, True, [], [[0, 255]], {}, "", "   ", "%%%not base64%%%", "/etc/passwd"),
    base64.b64encode(b"not an image at all").decode(),
    "data:text/plain,hello",
    "data:image/png;base64,AAAA",
    base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).decode(),  # a PNG header, no image
]
SEQUENCE_BAD: list[Any] = [
    *(None, 3, True, {}, "", "   ", "not json", "[1, 'x']", "[1e999]", "[]", [], [None]),
    *([[1, 2], [3]], [[[1.0]]], ["1", "2"], [3e39], [True, False], [1, [2]], {"a": [1]}),
]
BAD_VALUES = {
    "color": CATEGORY_BAD,
    "review": TEXT_BAD,
    "image": IMAGE_BAD,
    "signal": SEQUENCE_BAD,
}


def malformed(rng: random.Random, bodies: dict[str, dict[str, Any]]) -> Iterator[tuple]:
    """(path, headers, body bytes) of requests that must fail with a 4xx; endless, seeded."""
    huge_image = _png(5000, 5000)
    raw_bodies = [
        b"",
        b"{",
        b"[1, 2",
        b"null",
        b"[]",
        b"42",
        b'"instances"',
        b"{}",
        b'{"instances": NaN}',
        b'{"instances": [{"age": Infinity}]}',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser should recurse
        b'{"instances": [{"age": ' + b"9" * 5000 + b"}]}",  # beyond int-from-string limits
        b'{"instances": []}',
        b'{"instances": {}}',
        b'{"instances": [1, 2]}',
        b'{"instances": "x"}',
        b'{"instance": [{}]}',
        b'{"inputs": []}',
        b'{"inputs": {}}',
        b'{"inputs": [{}]}',
    ]
    paths = list(bodies)
    while True:
        path = rng.choice(paths)
        body = json.loads(json.dumps(bodies[path]))  # a fresh copy to mutate
        kind = rng.randrange(10)
        if kind == 0:
            yield path, JSON, rng.choice(raw_bodies)
        elif kind == 1:  # a good body with a content type that is not JSON
            ctype = rng.choice(["text/plain", "application/xml", "multipart/form-data; b=x"])
            yield path, {"content-type": ctype}, json.dumps(body).encode()
        elif kind == 2:  # truncated JSON
            text = json.dumps(body).encode()
            yield path, JSON, text[: rng.randrange(1, len(text))]
        elif path.startswith("/v1"):
            yield path, JSON, json.dumps(mutate_instances(rng, body, huge_image)).encode()
        else:
            yield path, JSON, json.dumps(mutate_inputs(rng, body)).encode()


def mutate_instances(rng: random.Random, body: dict, huge_image: str) -> dict:
    instances = body["instances"]
    row = rng.choice(instances)
    column = rng.choice(list(row))
    choice = rng.randrange(6)
    if choice == 0:
        del row[column]  # every column of these runs is required
    elif choice == 1:
        row[column + "_typo"] = row.pop(column)
    elif choice == 2:
        instances[rng.randrange(len(instances))] = rng.choice([1, "row", None, []])
    elif choice == 3 and column == "image":
        row[column] = huge_image
    else:
        row[column] = rng.choice(BAD_VALUES.get(column, NUMBER_BAD))
    return body


def mutate_inputs(rng: random.Random, body: dict) -> dict:
    tensor = rng.choice(body["inputs"])
    choice = rng.randrange(12)
    if choice == 0:
        body["inputs"].remove(tensor)
        if not body["inputs"]:
            body["inputs"] = [{"name": "nope", "shape": [1], "datatype": "FP64", "data": [1]}]
    elif choice == 1:
        del tensor[rng.choice(["name", "shape", "datatype", "data"])]
    elif choice == 2:
        tensor["shape"] = rng.choice([[], [-1], [0], [3], [1, 2, 3], ["2"], [2.5], "2", None])
    elif choice == 3:
        tensor["datatype"] = rng.choice(["FP8", "STRING", "", 7, "BOOL", "FP32"])
        if tensor["datatype"] == "FP32" and tensor["name"] not in ("review", "color", "image"):
            tensor["datatype"] = "BOOL"  # FP32 would be right for a number column
    elif choice == 4:
        tensor["data"] = rng.choice([[], "abc", None, {}, [[1], 2, [3, [4]]]])
    elif choice == 5:
        body["inputs"].append(dict(tensor))  # given twice
    elif choice == 6:
        tensor["name"] = rng.choice(["", "unknown", 5, None])
    elif choice == 7:
        body["outputs"] = [{"name": rng.choice(["logits", "", "label"])}]
    elif choice == 8:
        body["id"] = rng.choice([5, [], {}])
    elif choice == 9:
        bad = {"FP64": ["1", True, [], {}, 1e999], "INT64": [1.5, 2**70, "1", False, None]}
        bad["BYTES"] = IMAGE_BAD if tensor["name"] == "image" else [1, True, [], {}, 2.5]
        if tensor["name"] == "review":
            bad["BYTES"] = [*bad["BYTES"], None, "  "]
        if tensor["name"] == "signal":
            bad["BYTES"] = [*bad["BYTES"], None, "[1, 'x']", "[]", "{}", "[[1], [2, 3]]"]
        tensor["data"][rng.randrange(tensor["shape"][0])] = rng.choice(bad[tensor["datatype"]])
    elif choice == 10 and tensor["name"] == "image":
        tensor["datatype"], tensor["shape"] = "FP32", rng.choice([[1, 8], [1, 8, 8, 2], [1, 0, 8]])
        tensor["data"] = [0.5] * (8 * 8 * 2 if len(tensor["shape"]) == 4 else 8)
    else:
        tensor["shape"] = [tensor["shape"][0] + 1, *tensor["shape"][1:]]  # rows disagree
    return body


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(main_url: str) -> None:
    rng = random.Random(int(os.environ.get("FORGEML_TEST_SEED", "0")))
    bodies = good_bodies()
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=main_url, timeout=30) as client:
        for path, body in bodies.items():  # the unmutated bodies are good
            assert client.post(path, json=body).status_code == 200, (
                path,
                client.post(path, json=body).text,
            )
        requests = malformed(rng, bodies)
        for _ in range(500):
            path, headers, content = next(requests)
            r = client.post(path, content=content, headers=headers)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert 400 <= r.status_code < 500, (path, content[:300], r.status_code, r.text)
            error = r.json()
            assert isinstance(error["error"], str) and error["error"]
            if r.status_code == 422:
                assert error.get("field"), (content[:300], error)
        for bad in ("/v2/models/tabular/infer", "/v1/models/tabular:predict"):
            assert client.get(bad).status_code == 405
        assert (
            client.post(
                "/v1/models/tabular:predict", json=bodies["/v1/models/tabular:predict"]
            ).status_code
            == 200
        )
    assert statuses.get(422, 0) > 250 and statuses.get(400, 0) > 20 and statuses.get(415, 0) > 20


@pytest.mark.parametrize(
    ("path", "body", "field", "message"),
    [
        (
            "/v1/models/tabular:predict",
            {
                "instances": [dict(TABULAR_ROWS[0])] * 3
                + [{"age": "old", "income": 1, "color": "red"}]
            },
            "instances[3].age",
            "'old' is not a number",
        ),
        (
            "/v1/models/tabular:predict",
            {"instances": [{"age": 3, "color": "red"}]},
            "instances[0].income",
            "missing",
        ),
        (
            "/v1/models/tabular:predict",
            {"instances": [{"age": 3, "income": 1, "colour": "red"}]},
            "instances[0].colour",
            "did you mean 'color'",
        ),
        (
            "/v1/models/tabular:predict",
            {"instances": [{"age": 1e300, "income": 1, "color": "red"}]},
            "instances[0].age",
            "too large",
        ),
        (
            "/v1/models/tabular:predict",
            {"instances": [{"age": 3, "income": 1, "color": {}}]},
            "instances[0].color",
            "category",
        ),
        ("/v1/models/tabular:predict", {"instances": [{}], "extra": 1}, "extra", "Extra inputs"),
        (
            "/v1/models/reviews:predict",
            {"instances": [{"review": "ok"}, {"review": "  "}]},
            "instances[1].review",
            "empty text",
        ),
        (
            "/v1/models/digits:predict",
            {"instances": [{"image": "/etc/passwd"}]},
            "instances[0].image",
            "base64",
        ),
        (
            "/v1/models/digits:predict",
            {"instances": [{"image": base64.b64encode(b"GIF89a junk").decode()}]},
            "instances[0].image",
            "not a readable image",
        ),
        (
            "/v2/models/tabular/infer",
            {"inputs": [{"name": "age", "shape": [2], "datatype": "FP64", "data": [1.0, "x"]}]},
            "inputs[0].data[1]",
            "not a number",
        ),
        (
            "/v2/models/tabular/infer",
            {"inputs": [{"name": "age", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
            "inputs",
            "missing input 'income'",
        ),
        (
            "/v2/models/tabular/infer",
            {"inputs": [{"name": "age", "shape": [3], "datatype": "FP64", "data": [1.0]}]},
            "inputs[0].data",
            "1 values for shape [3]",
        ),
        (
            "/v2/models/tabular/infer",
            {"inputs": [{"name": "age", "shape": [1], "datatype": "INT8", "data": [300]}]},
            "inputs[0].data[0]",
            "INT8",
        ),
        (
            "/v2/models/tabular/infer",
            {"inputs": [{"name": "age", "shape": [1], "datatype": "FP64"}]},
            "inputs[0].data",
            "Field required",
        ),
        (
            "/v2/models/digits/infer",
            {"inputs": [{"name": "image", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]},
            "inputs[0].shape",
            "[N, H, W]",
        ),
        (
            "/v2/models/digits/infer",
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 2, 2],
                        "datatype": "FP32",
                        "data": [0.5, 2.0, 0.1, 0.1],
                    }
                ]
            },
            "inputs[0].data",
            "outside 0..1",
        ),
        *(  # lists where numbers belong, ragged or nested deeper than the shape (were 500s)
            (
                f"/v2/models/{model}/infer",
                {"inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": data}]},
                "inputs[0].data",
                "an array among the values",
            )
            for model, name, shape, data in [
                ("digits", "image", [1, 2, 2], [[[0.5, [0.5]], [0.5, 0.5]]]),
                ("digits", "image", [1, 1, 2], [[[[0.5, 0.5], [0.5, 0.5]]]]),
                ("waves", "signal", [1, 2], [[[1, 2], [3, 4]]]),
            ]
        ),
    ],
)
def test_errors_name_the_field(
    main_url: str, path: str, body: dict, field: str, message: str
) -> None:
    r = httpx.post(main_url + path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert message in r.json()["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/models/tabular:predict",
            b'{"instances": [{"age": 1, "color": "red", "\\ud800": 1}]}',
        ),
        # the same as UTF-8 bytes, which json.loads decodes with "surrogatepass"
        (
            "/v1/models/tabular:predict",
            b'{"instances": [{"age": 1, "color": "red", "\xed\xa0\x80": 1}]}',
        ),
        ("/v1/models/reviews:predict", b'{"instances": [{"review": "\\udfff"}]}'),
        (  # in UTF-16, which json.loads detects
            "/v1/models/tabular:predict",
            '{"instances": [{"\ud800": 1}]}'.encode("utf-16-le", "surrogatepass"),
        ),
        (
            "/v2/models/tabular/infer",
            b'{"inputs": [{"name": "\\udbff", "shape": [1], "datatype": "FP64", "data": [1]}]}',
        ),
    ],
)
def test_a_lone_surrogate_is_400(main_url: str, path: str, body: bytes) -> None:
    # Not text (no UTF-8 for it): error responses naming such a key or value failed (500s).
    r = httpx.post(main_url + path, content=body, headers=JSON)
    assert r.status_code == 400 and "lone surrogate" in r.json()["error"], r.text
    pair = b'{"instances": [{"review": "great \\ud83d\\ude00"}]}'  # a pair: one character
    r = httpx.post(f"{main_url}/v1/models/reviews:predict", content=pair, headers=JSON)
    assert r.status_code == 200, r.text


def test_nan_in_json_is_400(main_url: str) -> None:
    body = b'{"instances": [{"age": NaN, "income": 1, "color": "red"}]}'
    r = httpx.post(f"{main_url}/v1/models/tabular:predict", content=body, headers=JSON)
    assert r.status_code == 400 and "NaN" in r.json()["error"]


def test_body_over_the_limit_is_413_before_it_is_read(main_url: str) -> None:
    url = f"{main_url}/v1/models/tabular:predict"
    big = json.dumps({"instances": [TABULAR_ROWS[0]] * 8000}).encode()  # ~400 KB > 256 KB
    assert len(big) > 262_144
    r = httpx.post(url, content=big, headers=JSON)
    assert r.status_code == 413 and "262144" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        yield b'{"instances": ['
        for _ in range(64):
            yield b" " * 16384
        yield b"]}"

    r = httpx.post(url, content=chunks(), headers=JSON)
    assert r.status_code == 413
    small = {"instances": [TABULAR_ROWS[0]] * 100}
    assert httpx.post(url, json=small).status_code == 200


def test_outputs_that_are_not_finite_are_422(main_url: str) -> None:
    # Within float32 but far outside the training range: the logits overflow for some models;
    # the server must never answer NaN (invalid JSON) or a 5xx.
    r = httpx.post(
        f"{main_url}/v1/models/regression:predict",
        json={"instances": [{"x0": 3e38, "x1": -3e38, "x2": 3e38}]},
    )
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        assert np.isfinite(r.json()["predictions"][0]["prediction"])
