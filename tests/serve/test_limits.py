"""Batching, the bounded queue (429), the time limit (504) and the API key, on real servers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import (
    API_KEY,
    TABULAR_ROWS,
    Servers,
    digit_images,
    metric,
    png_base64,
    slow_post,
    wait_for,
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
    # One request is complete; three are on their way (their bodies stalled). The batch waits
    # for those (up to 10 s, for 8 rows) and runs all four in one forward.
    count, total = histogram(slow_url, "forgeml_batch_requests", "tabular", AUTH)
    path = "/v1/models/tabular:predict"
    bodies = [{"instances": TABULAR_ROWS[i : i + 2]} for i in (0, 1, 2, 2)]
    release = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        try:
            stalled = [pool.submit(slow_post, slow_url, path, b, release, AUTH) for b in bodies[1:]]
            # In the route, announced to the batcher: the three, and this /metrics request.
            wait_for(lambda: in_flight(slow_url) >= 4, "three stalled requests in flight")
            first = pool.submit(httpx.post, slow_url + path, json=bodies[0], headers=AUTH)
            # The complete one is queued; the batch now waits for the three on their way.
            wait_for(lambda: first.done() or queue_depth(slow_url) == 1, "a queued request")
            assert not first.done(), "the complete request did not wait for those on their way"
        finally:
            release.set()
        answer = first.result()
        responses = [(answer.status_code, answer.json()), *(f.result() for f in stalled)]
    assert [status for status, _ in responses] == [200] * 4, responses
    assert responses[2][1] == responses[3][1]
    new_count, new_total = histogram(slow_url, "forgeml_batch_requests", "tabular", AUTH)
    assert new_total - total == 4
    assert new_count - count == 1  # one forward for all four
    assert histogram(slow_url, "forgeml_batch_size", "tabular", AUTH)[1] >= 8


def test_a_lone_request_runs_at_once(slow_url: str) -> None:
    # Nothing else on its way: no waiting for the 10 s batch delay, which would outlast the
    # 3 s time limit (504).
    count, total = histogram(slow_url, "forgeml_batch_requests", "tabular", AUTH)
    url = f"{slow_url}/v1/models/tabular:predict"
    r = httpx.post(url, json={"instances": TABULAR_ROWS[:1]}, headers=AUTH, timeout=30)
    assert r.status_code == 200, f"a lone request waited for company: {r.text}"
    assert histogram(slow_url, "forgeml_batch_requests", "tabular", AUTH) == (count + 1, total + 1)


def test_request_over_the_time_limit_is_504_and_the_server_keeps_serving(slow_url: str) -> None:
    # A one-row request waits for another that is on its way (its body stalled until the 504);
    # the batch would wait 10 s for it, but the limit is 3 s.
    path = "/v1/models/tabular:predict"
    release = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        try:
            body = {"instances": TABULAR_ROWS[:1]}
            stalled = pool.submit(slow_post, slow_url, path, body, release, AUTH)
            wait_for(lambda: in_flight(slow_url) >= 2, "the stalled request in flight")
            r = httpx.post(slow_url + path, json=body, headers=AUTH, timeout=30)
            assert r.status_code == 504 and "--timeout-s" in r.json()["error"]
            assert not stalled.done()
        finally:
            release.set()
        assert stalled.result()[0] == 200  # its time limit starts once its body is read
    full = {"instances": [TABULAR_ROWS[0]] * 8}
    assert httpx.post(slow_url + path, json=full, headers=AUTH, timeout=30).status_code == 200


def in_flight(url: str) -> float:
    return metric(url, "forgeml_requests_in_flight", AUTH)


def queue_depth(url: str) -> float:
    return metric(url, "forgeml_queue_depth", AUTH, model="tabular")


def test_overload_gives_429_with_retry_after_and_no_5xx(servers: Servers, limits_url: str) -> None:
    # No batching, a queue of 2, and the running forward held: of 24 concurrent requests of 64
    # images each at most 3 get in, every other one is refused while they wait.
    images = [png_base64(img) for img in digit_images(64)]
    body = {"instances": [{"image": image} for image in images]}
    url = f"{limits_url}/v1/models/digits:predict"
    servers.limits_hold.touch()
    with ThreadPoolExecutor(24) as pool:
        try:
            posts = [pool.submit(httpx.post, url, json=body, timeout=60) for _ in range(24)]
            wait_for(lambda: sum(f.done() for f in posts) >= 21, "21 of 24 requests answered")
        finally:
            servers.limits_hold.unlink(missing_ok=True)
        responses = [f.result() for f in posts]
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 21 and codes.count(200) >= 2, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert "--max-queue" in r.json()["error"]
    assert httpx.post(url, json=body, timeout=60).status_code == 200  # and it recovers
    # --no-batching: every forward ran one request
    count, total = histogram(limits_url, "forgeml_batch_requests", "digits")
    assert count == total == codes.count(200) + 1
