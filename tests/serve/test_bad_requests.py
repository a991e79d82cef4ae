"""Malformed requests get a 4xx with a JSON error (naming the field where there is one), never a
5xx, and the server keeps serving; bodies over the limit get 413 before they are read."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator

import fuzz_requests
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from serve_helpers import TABULAR_ROWS

JSON = {"content-type": "application/json"}
FUZZ_EXAMPLES = 500  # a few seconds; bench/fuzz_serve.py runs thousands


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(main_url: str) -> None:
    """Hypothesis writes the bodies (fuzz_requests.py): every answer is a 2xx or a 4xx with a
    one-line JSON error, never a 5xx or a dropped connection. A fixed seed: the same examples
    each run; bench/fuzz_serve.py runs many more."""
    statuses: Counter[int | None] = Counter()
    with fuzz_requests.client(main_url) as client:
        for path in fuzz_requests.KSERVE_PATHS:  # the bodies the mutations start from are good
            for dense in (False, True):
                r = client.post(path, json=fuzz_requests.good_body(path, dense=dense))
                assert r.status_code == 200, (path, dense, r.text)

        @settings(
            derandomize=True,
            database=None,
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(request=fuzz_requests.requests(fuzz_requests.KSERVE_PATHS))
        def answered_well(request: fuzz_requests.Request) -> None:
            status, problem = fuzz_requests.problem(client, request)
            statuses[status] += 1
            assert problem is None, problem

        answered_well()
        for bad in ("/v2/models/tabular/infer", "/v1/models/tabular:predict"):
            assert client.get(bad).status_code == 405
        path = "/v1/models/tabular:predict"
        assert client.post(path, json=fuzz_requests.good_body(path)).status_code == 200
    # The examples reach every kind of answer, the predictions too, not only the parser.
    assert all(statuses[s] >= 5 for s in (200, 400, 415, 422)), statuses


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


def test_an_error_message_is_one_line(main_url: str) -> None:
    # The column a client named is quoted in the message: its line breaks come escaped.
    row = {**TABULAR_ROWS[0], "bad\ncolumn\u2028": 1}
    r = httpx.post(f"{main_url}/v1/models/tabular:predict", json={"instances": [row]})
    assert r.status_code == 422 and r.json()["field"] == "instances[0].bad\ncolumn\u2028"
    message = r.json()["error"]
    assert len(message.splitlines()) == 1 and "'bad\\ncolumn\\u2028'" in message, message


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
