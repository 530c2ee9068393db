"""The openai-client backend against a real HTTP server: retries, errors, structured output, cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from promptclimb.testing.fake_openai import FakeOpenAI, Reply
from services.optimizer.backend import ChatBackend, Completion
from services.optimizer.domain import ChatMessage, LLMAuthFailed, LLMRejected, LLMUnavailable

MESSAGES = [ChatMessage("system", "s"), ChatMessage("user", "give me templates")]
OK = '{"templates": ["a photo of a {}."]}'

MakeBackend = Callable[..., ChatBackend]


async def complete(backend: ChatBackend, seed: int | None = None) -> Completion:
    return await backend.complete(MESSAGES, temperature=0.5, n_templates=1, seed=seed)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_retries_429_honouring_retry_after_then_succeeds(
    fake: FakeOpenAI, make_backend: MakeBackend
) -> None:
    fake.replies = [Reply(status=429, retry_after=0.2), Reply(content=OK)]
    before = sample("promptclimb_optimizer_llm_requests_total", model="fake-model", outcome="rate_limited")
    start = time.perf_counter()
    completion = await complete(make_backend())
    assert completion.text == OK
    assert len(fake.requests) == 2
    assert time.perf_counter() - start >= 0.2  # waited as told, not the 1 ms backoff
    assert completion.latency_seconds >= 0.2
    after = sample("promptclimb_optimizer_llm_requests_total", model="fake-model", outcome="rate_limited")
    assert after - before == 1


async def test_retries_5xx_and_dropped_connections(fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.replies = [Reply(status=503), Reply(close_connection=True), Reply(content=OK)]
    completion = await complete(make_backend(max_retries=2))
    assert completion.text == OK
    assert len(fake.requests) == 3


async def test_unavailable_after_retries_are_exhausted(fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.replies = [Reply(status=500)] * 3 + [Reply(content=OK)]
    with pytest.raises(LLMUnavailable, match="failed 3 times, last: HTTP 500"):
        await complete(make_backend(max_retries=2))
    assert len(fake.requests) == 3


async def test_timeouts_are_retried_then_unavailable(fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.replies = [Reply(content=OK, delay=0.5), Reply(content=OK, delay=0.5)]
    before = sample("promptclimb_optimizer_llm_requests_total", model="fake-model", outcome="timeout")
    with pytest.raises(LLMUnavailable, match=r"timed out after 0\.1 s"):
        await complete(make_backend(timeout_seconds=0.1, max_retries=1))
    after = sample("promptclimb_optimizer_llm_requests_total", model="fake-model", outcome="timeout")
    assert after - before == 2


async def test_unreachable_endpoint_is_unavailable(make_backend: MakeBackend) -> None:
    with FakeOpenAI() as gone:
        url = gone.base_url  # a port that nothing listens on once stopped
    with pytest.raises(LLMUnavailable, match="connection failed"):
        await complete(make_backend(base_url=url, max_retries=1))


async def test_retry_after_beyond_the_cap_fails_at_once(fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.replies = [Reply(status=429, retry_after=3600)]
    with pytest.raises(LLMUnavailable) as caught:
        await complete(make_backend(retry_after_max_seconds=10))
    assert caught.value.retry_after_seconds == 3600
    assert len(fake.requests) == 1


async def test_wrong_key_is_an_auth_failure_without_the_key(
    fake: FakeOpenAI, make_backend: MakeBackend
) -> None:
    fake.api_key = "sk-right-key"
    with pytest.raises(LLMAuthFailed) as caught:
        await complete(make_backend(api_key="sk-wrong-secret-123456"))
    assert "HTTP 401" in str(caught.value)
    assert "sk-wrong-secret-123456" not in str(caught.value) and "3456" not in str(caught.value)


async def test_unknown_model_is_rejected_not_retried(fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.replies = [Reply(status=404)]
    with pytest.raises(LLMRejected, match="HTTP 404"):
        await complete(make_backend())
    assert len(fake.requests) == 1


async def test_structured_output_asks_for_the_json_schema(
    fake: FakeOpenAI, make_backend: MakeBackend
) -> None:
    fake.replies = [Reply(content=OK)]
    completion = await complete(make_backend())
    assert completion.structured
    sent = fake.requests[0]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"]["properties"]["templates"] == {
        "type": "array",
        "items": {"type": "string"},
    }


async def test_refused_structured_output_falls_back_and_is_remembered(
    fake: FakeOpenAI, make_backend: MakeBackend
) -> None:
    fake.reject_response_format = True
    fake.default = lambda _body: "1. a photo of a {}."
    backend = make_backend()
    first = await complete(backend)
    assert not first.structured and first.text == "1. a photo of a {}."
    formats = [r.get("response_format", {}).get("type") for r in fake.requests]
    assert formats == ["json_schema", "json_object", None]
    await complete(backend)
    assert "response_format" not in fake.requests[-1] and len(fake.requests) == 4


async def test_llama_cpp_python_500_about_response_format_is_a_refusal(
    fake: FakeOpenAI, make_backend: MakeBackend
) -> None:
    # llama-cpp-python's server answers type=json_schema with a 500 naming the field.
    body = b'{"error": {"message": "Input should be \'text\' or \'json_object\' (response_format.type)"}}'
    fake.replies = [Reply(status=500, raw_body=body), Reply(content=OK)]
    backend = make_backend(max_retries=0)
    completion = await complete(backend)
    assert completion.structured
    assert [r["response_format"]["type"] for r in fake.requests] == ["json_schema", "json_object"]
    assert fake.requests[1]["response_format"]["schema"]["properties"]["templates"]["minItems"] == 1


async def test_explicit_dialect_refused_is_an_error(fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.reject_response_format = True
    with pytest.raises(LLMRejected, match="refused response_format json_schema"):
        await complete(make_backend(structured_output="json_schema"))


async def test_structured_off_sends_no_response_format(fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.replies = [Reply(content="a {}")]
    completion = await complete(make_backend(structured_output="off"))
    assert not completion.structured and "response_format" not in fake.requests[0]


async def test_usage_is_returned_and_counted(fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.replies = [Reply(content=OK, prompt_tokens=120, completion_tokens=30)]
    before = sample("promptclimb_optimizer_llm_tokens_total", model="fake-model", kind="prompt")
    completion = await complete(make_backend())
    assert (completion.prompt_tokens, completion.completion_tokens, completion.llm_calls) == (120, 30, 1)
    after = sample("promptclimb_optimizer_llm_tokens_total", model="fake-model", kind="prompt")
    assert after - before == 120


async def test_cache_answers_a_repeated_request_without_calling(
    fake: FakeOpenAI, make_backend: MakeBackend, tmp_path: Path
) -> None:
    fake.default = lambda body: f"a photo of a {{}} number {len(fake.requests)}"
    backend = make_backend(cache_dir=tmp_path, structured_output="off")
    first = await complete(backend, seed=1)
    again = await complete(make_backend(cache_dir=tmp_path, structured_output="off"), seed=1)
    other_seed = await complete(backend, seed=2)
    assert again.text == first.text and again.cached and again.llm_calls == 0 and again.prompt_tokens == 0
    assert other_seed.text != first.text
    assert len(fake.requests) == 2


async def test_seed_and_max_tokens_are_sent(fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.replies = [Reply(content=OK)]
    await complete(make_backend(max_tokens=64), seed=7)
    assert fake.requests[0]["seed"] == 7 and fake.requests[0]["max_tokens"] == 64
    assert fake.requests[0]["temperature"] == 0.5
