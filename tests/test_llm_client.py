"""sert.llm_client against the fake OpenAI-compatible server, through the real openai client."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from fake_openai_server import FakeOpenAI
from sert.artifacts import read_jsonl
from sert.llm_client import (FatalAPIError, LLMClient, ResponseCache, backoff_seconds, estimate_cost, make_request,
                             retry_after_seconds)

KEY = "sk-test-SECRET-0123456789"


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)
    with FakeOpenAI(api_key=KEY) as srv:
        yield srv


def client(srv: FakeOpenAI, path, **kw) -> LLMClient:
    opts = dict(base_url=srv.base_url, api_key_env="FAKE_KEY", timeout=2.0, max_retries=3, backoff_base=0.01,
                backoff_max=0.05, concurrency=4, progress=False)
    return LLMClient(ResponseCache(path), **{**opts, **kw})


def reqs(*prompts: str, api: str = "completions", **sampling):
    return [make_request(api, "fake-model", p, {"temperature": 0.0, "max_tokens": 32, **sampling}) for p in prompts]


def test_429_retry_after_is_honoured(server, tmp_path):
    server.retry_after = "1"
    server.faults = {"q1": ["429"]}
    c = client(server, tmp_path / "r.jsonl")
    start = time.perf_counter()
    [res] = c.run(reqs("q1"))
    elapsed = time.perf_counter() - start
    assert res.ok and res.attempts == 2
    assert elapsed >= 0.95  # backoff alone would have waited <= 0.05 s
    assert server.calls["q1"] == 2 and c.stats.retries == 1 and c.stats.api_calls == 2


def test_500_and_malformed_json_are_retried(server, tmp_path):
    server.faults = {"a": ["500", "500"], "b": ["malformed"]}
    c = client(server, tmp_path / "r.jsonl")
    res = c.run(reqs("a", "b", "c"))
    assert all(r.ok for r in res)
    assert [server.calls[p] for p in "abc"] == [3, 2, 1]
    assert c.stats.retries == 3 and c.stats.failed == 0


def test_failure_after_budget_is_counted_and_run_continues(server, tmp_path):
    server.faults = {"bad": ["500"] * 10}
    c = client(server, tmp_path / "r.jsonl", max_retries=2)
    res = c.run([*reqs("ok1", "bad", "ok2")])
    assert [r.ok for r in res] == [True, False, True]
    assert server.calls["bad"] == 3  # 1 + max_retries
    assert c.stats.failed == 1 and c.stats.failures[0]["error"] == "http 500"
    assert res[1].request.key not in ResponseCache(tmp_path / "r.jsonl").rows  # failures are not cached
    # a rerun once the endpoint recovered calls exactly the failed request
    server.faults = {}
    c2 = client(server, tmp_path / "r.jsonl")
    assert all(r.ok for r in c2.run(reqs("ok1", "bad", "ok2")))
    assert server.calls["bad"] == 4 and server.calls["ok1"] == 1 and c2.stats.cache_hits == 2


def test_timeout_is_retried_then_counted(server, tmp_path):
    server.slow_seconds = 1.5
    server.faults = {"slow-once": ["slow"], "slow-always": ["slow"] * 5}
    c = client(server, tmp_path / "r.jsonl", timeout=0.4, max_retries=1)
    once, always = c.run(reqs("slow-once", "slow-always"))
    assert once.ok and once.attempts == 2
    assert not always.ok and always.error == "timeout" and always.attempts == 2
    assert c.stats.failed == 1


def test_second_run_makes_no_calls_and_key_ignores_url(server, tmp_path):
    path = tmp_path / "r.jsonl"
    first = client(server, path).run(reqs("x", "y", api="chat"))
    calls = server.total_calls
    with FakeOpenAI(api_key=KEY) as other:  # another endpoint URL, same model and params: still cached
        second = client(other, path).run(reqs("x", "y", api="chat"))
        assert other.total_calls == 0
    assert [r.text for r in first] == [r.text for r in second] and all(r.cached for r in second)
    assert server.total_calls == calls
    # a changed sampling parameter or sample index is a different call
    c = client(server, path)
    c.run(reqs("x", api="chat", temperature=0.7) + [make_request("chat", "fake-model", "x", {"temperature": 0.0, "max_tokens": 32}, index=1)])
    assert server.calls["x"] == 3 and c.stats.cache_hits == 0


def test_log_rows_are_complete_and_never_hold_the_key(server, tmp_path):
    path = tmp_path / "r.jsonl"
    client(server, path).run(reqs("p1", "p2"))
    rows = read_jsonl(path)
    assert len(rows) == 2 and {r["request"]["prompt"] for r in rows} == {"p1", "p2"}
    assert all(r["usage"]["completion_tokens"] > 0 for r in rows)
    assert KEY not in path.read_text() and server.auth_headers[0] == f"Bearer {KEY}"


def test_bad_key_is_fatal_with_clear_message(server, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "wrong")
    with pytest.raises(FatalAPIError, match="authentication failed"):
        client(server, tmp_path / "r.jsonl").run(reqs("p"))
    monkeypatch.delenv("FAKE_KEY")
    c = LLMClient(ResponseCache(tmp_path / "r.jsonl"), base_url=None, api_key_env="FAKE_KEY", progress=False)
    with pytest.raises(FatalAPIError, match="FAKE_KEY"):
        c.run(reqs("p"))


def test_concurrency_overlaps_slow_calls(server, tmp_path):
    server.slow_seconds = 0.5
    server.faults = {f"s{i}": ["slow"] for i in range(4)}
    c = client(server, tmp_path / "r.jsonl", concurrency=4, timeout=5)
    start = time.perf_counter()
    assert all(r.ok for r in c.run(reqs(*[f"s{i}" for i in range(4)])))
    assert time.perf_counter() - start < 1.5  # serial would take >= 2 s


def test_batch_end_to_end_and_resume_by_batch_id(server, tmp_path):
    path, state = tmp_path / "r.jsonl", tmp_path / "entry"
    state.mkdir()
    server.batch_polls = 4  # the batch completes on the 4th poll
    requests = reqs("b1", "b2", "b3", api="chat")
    with pytest.raises(TimeoutError, match="rerun"):
        client(server, path).run_batch(requests, state, poll_interval=0.01, max_wait=0.0)
    assert (state / "batch.json").exists() and server.paths["/v1/batches"] == 1
    c = client(server, path)
    res = c.run_batch(requests, state, poll_interval=0.01)
    assert [r.ok for r in res] == [True] * 3 and res[0].text.strip().startswith("The answer")
    assert server.paths["/v1/batches"] == 1 and server.paths["/v1/files"] == 1  # polled, not resubmitted
    assert not (state / "batch.json").exists() and (state / "batch-batch_1.json").exists()
    assert {r["custom_id"] for r in read_jsonl(state / "batch_input.jsonl")} == {r.key for r in requests}
    assert len(read_jsonl(path)) == 3
    # everything cached now: no batch, no calls
    before = sum(server.paths.values())
    res = client(server, path).run_batch(requests, state, poll_interval=0.01)
    assert all(r.cached for r in res) and sum(server.paths.values()) == before


def test_retry_after_parsing_and_backoff_bounds():
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    date = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.5 < retry_after_seconds({"retry-after": date}) <= 5.0
    assert retry_after_seconds({}) is None
    rng = random.Random(0)
    for attempt in range(8):
        d = min(4.0, 0.5 * 2 ** attempt)
        assert d / 2 <= backoff_seconds(attempt, 0.5, 4.0, rng) <= d


def test_estimate_cost():
    # 2M prompt tokens at $1.50/1M + 1M completion tokens at $2/1M = $5; batch halves it
    assert estimate_cost(2_000_000, 1_000_000, 1.5, 2.0) == 5.0
    assert estimate_cost(2_000_000, 1_000_000, 1.5, 2.0, 0.5) == 2.5


def test_connection_error_is_retried_then_counted(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FAKE_KEY", KEY)
    c = LLMClient(ResponseCache(tmp_path / "r.jsonl"), base_url=f"http://127.0.0.1:{port}/v1", api_key_env="FAKE_KEY",
                  max_retries=2, backoff_base=0.01, backoff_max=0.02, progress=False)
    [res] = c.run(reqs("p"))
    assert res.error == "connection" and res.attempts == 3 and c.stats.api_calls == 3 and c.stats.failed == 1


def test_one_at_a_time_server_times_out_queued_requests_unless_concurrency_1(tmp_path, monkeypatch):
    """llama.cpp answers one request at a time: concurrent requests wait in its queue and the timeout
    (counted from when a request is sent) expires for the ones at the back; concurrency 1 (the
    teacher=llamacpp preset) keeps nothing queued, so the same timeout suffices."""
    monkeypatch.setenv("FAKE_KEY", KEY)
    prompts = [f"p{i}" for i in range(6)]
    with FakeOpenAI(api_key=KEY, serial_seconds=0.3) as srv:  # request k waits >= 0.3 * k s
        res = client(srv, tmp_path / "a.jsonl", concurrency=6, timeout=1.0, max_retries=0).run(reqs(*prompts))
        failed = [r for r in res if not r.ok]
        assert len(failed) >= 2 and {r.error for r in failed} == {"timeout"} and srv.max_in_flight >= 4
    with FakeOpenAI(api_key=KEY, serial_seconds=0.3) as srv:
        res = client(srv, tmp_path / "b.jsonl", concurrency=1, timeout=1.0, max_retries=0).run(reqs(*prompts))
        assert all(r.ok for r in res) and srv.max_in_flight == 1 and srv.total_calls == 6
