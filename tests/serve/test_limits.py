"""Batching, the bounded queue (429), the time limit (504) and the API key, on real servers."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import (
    API_KEY,
    TABULAR_ROWS,
    Servers,
    digit_images,
    png_base64,
    slow_post,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def slow_url(servers: Servers) -> str:
    return servers.slow.wait_ready(headers=AUTH)


@pytest.fixture(scope="module")
def limits_url(servers: Servers) -> str:
    return servers.limits.wait_ready()


def histogram(url: str, name: str, model: str, headers: dict | None = None) -> tuple[float, float]:
    """(count, sum) of a histogram of one model."""
    text = httpx.get(f"{url}/metrics", headers=headers).text
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("model") == model and s.name in (f"{name}_count", f"{name}_sum")
    }
    return values.get(f"{name}_count", 0.0), values.get(f"{name}_sum", 0.0)


def test_api_key_guards_every_route_but_health(slow_url: str) -> None:
    predict = f"{slow_url}/v1/models/tabular:predict"
    body = {"instances": [TABULAR_ROWS[0]] * 8}  # 8 rows fill a batch: no waiting
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = httpx.post(predict, json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "API key" in r.json()["error"]
    for path in ("/metrics", "/openapi.json", "/v2/models/tabular", "/v1/models", "/v2"):
        assert httpx.get(slow_url + path).status_code == 401
        assert httpx.get(slow_url + path, headers=AUTH).status_code == 200
    assert httpx.get(f"{slow_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{slow_url}/v2/health/ready").status_code == 200
    assert httpx.post(predict, json=body, headers=AUTH).status_code == 200


def test_concurrent_requests_are_merged_into_one_forward(slow_url: str) -> None:
    # One request is complete at once; three are on their way (bodies stalled 0.3 s). The
    # batch waits for those (up to 2 s, for 8 rows) and runs all four in one forward.
    count, total = histogram(slow_url, "forgeml_batch_requests", "tabular", AUTH)
    path = "/v1/models/tabular:predict"
    bodies = [{"instances": TABULAR_ROWS[i : i + 2]} for i in (0, 1, 2, 2)]
    with ThreadPoolExecutor(4) as pool:
        stalled = [pool.submit(slow_post, slow_url, path, b, 0.3, AUTH) for b in bodies[1:]]
        time.sleep(0.1)  # the three are in the route, reading their bodies
        first = httpx.post(slow_url + path, json=bodies[0], headers=AUTH, timeout=10)
        responses = [(first.status_code, first.json()), *(f.result() for f in stalled)]
    assert [status for status, _ in responses] == [200] * 4, responses
    assert responses[2][1] == responses[3][1]
    new_count, new_total = histogram(slow_url, "forgeml_batch_requests", "tabular", AUTH)
    assert new_total - total == 4
    assert new_count - count == 1  # one forward for all four
    assert histogram(slow_url, "forgeml_batch_size", "tabular", AUTH)[1] >= 8


def test_a_lone_request_runs_at_once(slow_url: str) -> None:
    # Nothing else on its way: no waiting for the 2 s batch delay.
    url = f"{slow_url}/v1/models/tabular:predict"
    started = time.monotonic()
    r = httpx.post(url, json={"instances": TABULAR_ROWS[:1]}, headers=AUTH, timeout=10)
    assert r.status_code == 200 and time.monotonic() - started < 0.5


def test_request_over_the_time_limit_is_504_and_the_server_keeps_serving(slow_url: str) -> None:
    # A one-row request waits for another that is on its way (its body stalls 3 s); the batch
    # would wait 2 s for it, but the limit is 1 s.
    path = "/v1/models/tabular:predict"
    with ThreadPoolExecutor(1) as pool:
        stalled = pool.submit(slow_post, slow_url, path, {"instances": TABULAR_ROWS[:1]}, 3, AUTH)
        time.sleep(0.2)
        r = httpx.post(slow_url + path, json={"instances": TABULAR_ROWS[:1]}, headers=AUTH)
        assert r.status_code == 504 and "--timeout-s" in r.json()["error"]
        assert stalled.result()[0] == 200  # its time limit starts once its body is read
    full = {"instances": [TABULAR_ROWS[0]] * 8}
    assert httpx.post(slow_url + path, json=full, headers=AUTH, timeout=10).status_code == 200


def test_overload_gives_429_with_retry_after_and_no_5xx(limits_url: str) -> None:
    # No batching and a queue of 2: 24 concurrent requests of 64 images each cannot all wait.
    images = [png_base64(img) for img in digit_images(64)]
    body = {"instances": [{"image": image} for image in images]}
    url = f"{limits_url}/v1/models/digits:predict"
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda _: httpx.post(url, json=body, timeout=30), range(24)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 1 and codes.count(200) >= 2, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert "--max-queue" in r.json()["error"]
    assert httpx.post(url, json=body, timeout=30).status_code == 200  # and it recovers
    # --no-batching: every forward ran one request
    count, total = histogram(limits_url, "forgeml_batch_requests", "digits")
    assert count == total == codes.count(200) + 1
