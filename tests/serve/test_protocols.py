"""Both protocols against `Predictor`, metadata, health, OpenAPI and metrics, on a real server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import REVIEWS, TABULAR_ROWS, Runs, digit_images, png_base64

from forgeml.tasks.table.predictor import Predictor


def predict(url: str, model: str, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = httpx.post(f"{url}/v1/models/{model}:predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def infer(url: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{url}/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def assert_same(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        if isinstance(e["prediction"], float):
            assert g["prediction"] == pytest.approx(e["prediction"], rel=1e-5, abs=1e-6)
        else:
            assert g["prediction"] == e["prediction"]
        if "probabilities" in e:
            assert list(g["probabilities"]) == list(e["probabilities"])
            np.testing.assert_allclose(
                list(g["probabilities"].values()), list(e["probabilities"].values()), atol=1e-6
            )


def oip_rows(response: dict[str, Any], classes: list[str] | None) -> list[dict[str, Any]]:
    """OIP outputs back into Predictor's row dicts."""
    outputs = {o["name"]: o for o in response["outputs"]}
    labels = outputs["prediction"]["data"]
    rows: list[dict[str, Any]] = [{"prediction": label} for label in labels]
    if classes is not None:
        probs = outputs["probabilities"]
        assert probs["datatype"] == "FP32" and probs["shape"] == [len(labels), len(classes)]
        assert probs["parameters"]["classes"] == classes
        width = len(classes)
        for i, row in enumerate(rows):
            row["probabilities"] = dict(
                zip(classes, probs["data"][i * width : (i + 1) * width], strict=True)
            )
    return rows


def test_friendly_route_gives_the_predictions_of_predictor(main_url: str, runs: Runs) -> None:
    tabular = Predictor(runs.tabular)
    assert_same(predict(main_url, "tabular", TABULAR_ROWS), tabular.predict(TABULAR_ROWS))

    images = digit_images(6)
    digits = Predictor(runs.digits)
    sent = [{"image": png_base64(img)} for img in images]
    sent[0]["image"] = "data:image/png;base64," + sent[0]["image"]  # data URLs work too
    got = predict(main_url, "digits", sent)
    assert_same(got, digits.predict([{"image": img} for img in images]))
    assert all(isinstance(row["prediction"], int) for row in got)  # classes keep their type

    reviews = Predictor(runs.reviews)
    records = [{"review": text} for text in REVIEWS]
    assert_same(predict(main_url, "reviews", records), reviews.predict(records))

    regression = Predictor(runs.regression)
    rng = np.random.default_rng(1)
    records = [{f"x{j}": float(v) for j, v in enumerate(row)} for row in rng.normal(size=(5, 3))]
    records[0]["y"] = 1.0  # the target column may come along (records from a training file)
    got = predict(main_url, "regression", records)
    assert_same(got, regression.predict(records))
    assert set(got[0]) == {"prediction"}


def test_oip_infer_gives_the_predictions_of_predictor(main_url: str, runs: Runs) -> None:
    tabular = Predictor(runs.tabular)
    n = len(TABULAR_ROWS)
    body = {
        "id": "request-7",
        "inputs": [
            {
                "name": "age",
                "shape": [n],
                "datatype": "FP64",
                "data": [r["age"] for r in TABULAR_ROWS],
            },
            {  # nested [N, 1] integers are fine as well
                "name": "income",
                "shape": [n, 1],
                "datatype": "INT64",
                "data": [[int(r["income"])] for r in TABULAR_ROWS],
            },
            {
                "name": "color",
                "shape": [n],
                "datatype": "BYTES",
                "data": [r["color"] for r in TABULAR_ROWS],
            },
        ],
    }
    response = infer(main_url, "tabular", body)
    assert response["model_name"] == "tabular" and response["id"] == "request-7"
    assert response["outputs"][0]["datatype"] == "BYTES"
    assert_same(oip_rows(response, ["no", "yes"]), tabular.predict(TABULAR_ROWS))

    body["outputs"] = [{"name": "probabilities"}]  # only what is asked for
    assert [o["name"] for o in infer(main_url, "tabular", body)["outputs"]] == ["probabilities"]

    images = digit_images(4, seed=3)
    expected = Predictor(runs.digits).predict([{"image": img} for img in images])
    classes = [str(c) for c in range(10)]
    as_bytes = {
        "inputs": [
            {
                "name": "image",
                "shape": [4],
                "datatype": "BYTES",
                "data": [png_base64(img) for img in images],
            }
        ]
    }
    response = infer(main_url, "digits", as_bytes)
    assert response["outputs"][0]["datatype"] == "INT64"
    assert_same(oip_rows(response, classes), expected)
    pixels = (np.stack(images).astype(np.float64) / 255.0)[..., None]  # (4, 8, 8, 1) in [0, 1]
    as_floats = {
        "inputs": [
            {"name": "image", "shape": [4, 8, 8, 1], "datatype": "FP32", "data": pixels.tolist()}
        ]
    }
    assert_same(oip_rows(infer(main_url, "digits", as_floats), classes), expected)
    flat_uint8 = {  # [N, H, W], flat row-major
        "inputs": [
            {
                "name": "image",
                "shape": [4, 8, 8],
                "datatype": "UINT8",
                "data": np.stack(images).ravel().tolist(),
            }
        ]
    }
    assert_same(oip_rows(infer(main_url, "digits", flat_uint8), classes), expected)

    reviews = {"inputs": [{"name": "review", "shape": [4], "datatype": "BYTES", "data": REVIEWS}]}
    expected = Predictor(runs.reviews).predict([{"review": t} for t in REVIEWS])
    assert_same(oip_rows(infer(main_url, "reviews", reviews), ["neg", "pos"]), expected)

    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 3))
    body = {
        "inputs": [
            {"name": f"x{j}", "shape": [3], "datatype": "FP32", "data": x[:, j].tolist()}
            for j in range(3)
        ]
    }
    response = infer(main_url, "regression", body)
    assert [o["name"] for o in response["outputs"]] == ["prediction"]
    assert response["outputs"][0]["datatype"] == "FP64"
    records = [{f"x{j}": float(v) for j, v in enumerate(row)} for row in x]
    assert_same(oip_rows(response, None), Predictor(runs.regression).predict(records))


def test_health_metadata_and_openapi(main_url: str) -> None:
    assert httpx.get(f"{main_url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{main_url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{main_url}/v2").json()["name"] == "forgeml"
    ready = httpx.get(f"{main_url}/v2/models/digits/ready")
    assert ready.status_code == 200 and ready.json() == {"name": "digits", "ready": True}

    meta = httpx.get(f"{main_url}/v2/models/tabular").json()
    assert meta["name"] == "tabular" and meta["parameters"]["task"] == "binary"
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("age", "FP64"),
        ("income", "FP64"),
        ("color", "BYTES"),
    ]
    assert [o["name"] for o in meta["outputs"]] == ["prediction", "probabilities"]
    image = httpx.get(f"{main_url}/v2/models/digits").json()["inputs"][0]
    assert image["datatype"] == "BYTES" and image["parameters"]["image_shape"] == [8, 8, 1]

    models = httpx.get(f"{main_url}/v1/models").json()["models"]
    assert [m["name"] for m in models][:4] == ["tabular", "digits", "reviews", "regression"]

    missing = httpx.get(f"{main_url}/v2/models/nope")
    assert missing.status_code == 404 and "tabular" in missing.json()["error"]
    r = httpx.post(f"{main_url}/v1/models/nope:predict", json={"instances": [{}]})
    assert r.status_code == 404
    assert httpx.get(f"{main_url}/no/such/route").status_code == 404

    spec = httpx.get(f"{main_url}/openapi.json").json()
    for path in ("/v2/models/{name}/infer", "/v1/models/{name}:predict", "/metrics"):
        assert path in spec["paths"]
    body = spec["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in spec["components"]["schemas"]
    assert "InferInput" in spec["components"]["schemas"]  # nested models are there too


def metric_samples(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_batches_and_queue(main_url: str) -> None:
    route = "/v1/models/{name}:predict"

    def count(samples: dict, status: str) -> float:
        labels = frozenset(
            {"route": route, "method": "POST", "model": "regression", "status": status}.items()
        )
        return samples.get(("forgeml_requests_total", labels), 0.0)

    before = metric_samples(main_url)
    good = {"instances": [{"x0": 0.1, "x1": 0.2, "x2": 0.3}] * 3}
    for _ in range(4):
        assert httpx.post(f"{main_url}/v1/models/regression:predict", json=good).status_code == 200
    bad = {"instances": [{"x0": "zero", "x1": 0.2, "x2": 0.3}]}
    for _ in range(2):
        assert httpx.post(f"{main_url}/v1/models/regression:predict", json=bad).status_code == 422
    after = metric_samples(main_url)
    assert count(after, "200") - count(before, "200") == 4
    assert count(after, "422") - count(before, "422") == 2

    model = frozenset({"model": "regression"}.items())
    rows = after[("forgeml_batch_size_sum", model)] - before.get(
        ("forgeml_batch_size_sum", model), 0
    )
    assert rows == 12  # 4 requests x 3 rows; the bad ones never reached the model
    assert ("forgeml_queue_depth", model) in after
    assert after[("forgeml_model_ready", model)] == 1.0
    latency = frozenset({"route": route, "method": "POST"}.items())
    assert after[("forgeml_request_duration_seconds_count", latency)] >= 6


def test_multilabel_and_sequence_models(main_url: str, runs: Runs) -> None:
    tags = Predictor(runs.tags)
    records = [{"x0": 1.0, "x1": -1.0}, {"x0": -0.5, "x1": 2.0}, {"x0": 0.0, "x1": 0.1}]
    expected = tags.predict(records)
    assert_same(predict(main_url, "tags", records), expected)
    body = {
        "inputs": [
            {"name": n, "shape": [3], "datatype": "FP32", "data": [r[n] for r in records]}
            for n in ("x0", "x1")
        ]
    }
    outputs = {o["name"]: o for o in infer(main_url, "tags", body)["outputs"]}
    chosen = outputs["prediction"]
    assert chosen["datatype"] == "BOOL" and chosen["shape"] == [3, 2]
    labels = ["a", "b"]
    for i, row in enumerate(expected):
        assert [labels[k] for k in range(2) if chosen["data"][2 * i + k]] == row["prediction"]
    assert outputs["probabilities"]["parameters"]["classes"] == labels

    waves = Predictor(runs.waves)
    signals = [[0.1, 0.5, 0.2, -0.3], [1.0, -1.0, 1.0, -1.0, 1.0, -1.0], [0.0] * 5]
    records = [{"signal": s} for s in signals]
    expected = waves.predict(records)
    assert_same(predict(main_url, "waves", records), expected)
    classes = ["sawtooth", "sine", "square"]
    as_json = {  # variable lengths: one JSON array per row, as in a CSV file
        "inputs": [
            {
                "name": "signal",
                "shape": [3],
                "datatype": "BYTES",
                "data": [json.dumps(s) for s in signals],
            }
        ]
    }
    assert_same(oip_rows(infer(main_url, "waves", as_json), classes), expected)
    same_length = [s[:4] for s in signals]  # a dense [N, L] tensor needs one length
    dense = {
        "inputs": [{"name": "signal", "shape": [3, 4], "datatype": "FP32", "data": same_length}]
    }
    expected = waves.predict([{"signal": s} for s in same_length])
    assert_same(oip_rows(infer(main_url, "waves", dense), classes), expected)
    r = httpx.post(
        f"{main_url}/v1/models/waves:predict", json={"instances": [{"signal": [1.0, "x"]}]}
    )
    assert r.status_code == 422 and r.json()["field"] == "instances[0].signal"
