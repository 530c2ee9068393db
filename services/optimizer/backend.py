"""The chat-LLM backend: ``openai.AsyncOpenAI`` against any OpenAI-compatible endpoint.

Retries are ours, not the client's (its ``max_retries`` is 0), so the backoff is an explicit setting
and tests can make it tiny: exponential from ``backoff_initial_seconds`` up to ``backoff_max_seconds``
on 429, 408/409, 5xx, timeouts and connection errors, honouring ``Retry-After`` up to a cap.

Structured output: the request asks for ``{"templates": [string]}`` through ``response_format``,
in one of two dialects: ``json_schema`` (OpenAI, vLLM, Ollama, llama.cpp's C++ server) or
``json_object`` with a ``schema`` (llama-cpp-python's server, which answers ``json_schema`` with 422).
Both compile the schema to a grammar on local servers, which keeps even a tiny model on format.
In ``auto`` mode a backend that refuses a dialect with 400/422 gets the next one, then plain text,
and the refusal is remembered for the life of this backend object.

The API key is only handed to the client; error messages are written here and scrubbed of it.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import openai

from services.optimizer import metrics
from services.optimizer.context import context_from_server, is_context_rejection, parse_context_rejection
from services.optimizer.domain import ChatMessage, ContextTooLong, LLMAuthFailed, LLMRejected, LLMUnavailable

log = logging.getLogger(__name__)

TEMPLATES_SCHEMA: dict[str, Any] = {
    "name": "templates",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"templates": {"type": "array", "items": {"type": "string"}}},
        "required": ["templates"],
        "additionalProperties": False,
    },
}

# A template as a grammar can enforce it: exactly one "{}" slot, short text around it. Only in
# the json_object dialect (llama-cpp-python compiles it into the sampling grammar, so even a 135M
# model writes a slot in every template; without it SmolLM2 wrote class names instead of "{}" in
# most replies). The character set is explicit ASCII on purpose: llama-cpp-python 0.3's
# pattern-to-grammar converter crashed the server on a negated class such as [^{}].
SLOT_PATTERN = r"^[a-zA-Z0-9 ,.'!?;:()-]{0,60}\{\}[a-zA-Z0-9 ,.'!?;:()-]{0,60}$"

# The structured-output dialects, in the order auto mode tries them.
RESPONSE_FORMATS: dict[str, dict[str, Any]] = {
    "json_schema": {"type": "json_schema", "json_schema": TEMPLATES_SCHEMA},
    # minItems stops a grammar-bound small model from answering {"templates": []}; it and the slot
    # pattern are kept out of the json_schema dialect because strict OpenAI schemas have not
    # always accepted them.
    "json_object": {
        "type": "json_object",
        "schema": {
            **TEMPLATES_SCHEMA["schema"],
            "properties": {
                "templates": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "pattern": SLOT_PATTERN},
                }
            },
        },
    },
}

# Statuses worth another try; 400/401/403/404/422 will answer the same way again.
_RETRYABLE_STATUS = {408, 409, 429}
# Statuses with which a backend says "I do not understand response_format".
_REFUSES_FORMAT_STATUS = {400, 422}
# Placeholder for local servers that want no key: the client insists on one.
_NO_KEY = "no-key"


@dataclass(frozen=True)
class BackendConfig:
    """How to reach the LLM and how hard to try."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    timeout_seconds: float = 60.0
    max_retries: int = 4
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 8.0
    retry_after_max_seconds: float = 60.0
    structured_output: str = "auto"  # auto | json_schema | json_object | off
    max_tokens: int | None = 512
    cache_dir: Path | None = None

    def __repr__(self) -> str:  # keep the key out of any accidental log line
        return f"BackendConfig(model={self.model!r}, base_url={self.base_url!r}, api_key=***)"


@dataclass
class Completion:
    """One reply of the LLM and what it cost."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    structured: bool = False
    cached: bool = False
    llm_calls: int = 1
    latency_seconds: float = 0.0
    finish_reason: str = ""  # "length": the reply was cut (by max_tokens or a full context window)


class ResponseCache:
    """Replies on disk, one JSON file per request, keyed by a hash of the full request."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        """SHA-256 of the request (model, messages, temperature, n, seed, format) as canonical JSON."""
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> Completion | None:
        """The stored completion, or None (a missing or unreadable entry is a miss)."""
        try:
            data = json.loads((self.directory / f"{key}.json").read_text())
            return Completion(**data)
        except (OSError, ValueError, TypeError):
            return None

    def put(self, key: str, completion: Completion) -> None:
        """Store atomically, so a concurrent reader never sees half a file."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(completion), f)
        os.replace(tmp, self.directory / f"{key}.json")


def retry_after_seconds(headers: Any) -> float | None:
    """The server's requested delay from ``retry-after-ms`` or ``Retry-After`` (seconds or a date)."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            delay = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is None:
                continue
            delay = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(delay):
            return max(delay, 0.0)
    return None


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (and its last characters) masked."""
    if secret and secret != _NO_KEY:
        text = text.replace(secret, "***")
        # OpenAI echoes keys as "sk-proj-****abcd": mask the tail too.
        if len(secret) >= 8:
            text = text.replace(secret[-4:], "****")
    return text


class ChatBackend:
    """Sends chat messages to one OpenAI-compatible endpoint and returns the reply text."""

    def __init__(self, config: BackendConfig, client: openai.AsyncOpenAI | None = None) -> None:
        self.config = config
        self.client = client or openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key or _NO_KEY,
            timeout=config.timeout_seconds,
            max_retries=0,  # retries are ours: see the module docstring
        )
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        # Side requests (tokenizer, props): short timeout, no retries, never on the hot path twice.
        self._quick = self.client.with_options(timeout=min(10.0, config.timeout_seconds), max_retries=0)
        self._tokenizer: str | None = None  # "extras", "llama.cpp", "none" once known
        # Dialects still worth trying, best first; auto mode drops those the backend refused.
        mode = config.structured_output
        self._formats: list[str] = (
            list(RESPONSE_FORMATS) if mode == "auto" else [] if mode == "off" else [mode]
        )

    @property
    def endpoint(self) -> str:
        """The base URL, for messages (never carries the key)."""
        return str(self.client.base_url)

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self.client.close()

    async def probe(self, timeout_seconds: float = 5.0) -> bool:
        """Whether the endpoint answers ``GET /models``; for a start-up log line only."""
        try:
            await self.client.with_options(timeout=timeout_seconds, max_retries=0).models.list()
            return True
        except openai.OpenAIError:
            return False

    async def tokenize_count(self, text: str) -> int | None:
        """Tokens of ``text`` by the endpoint's own tokenizer, or None where it offers none.

        llama-cpp-python serves ``/extras/tokenize/count``, llama.cpp's C++ server ``/tokenize``;
        the first that answers is remembered, and an endpoint with neither is asked only once.
        """
        if self._tokenizer == "none":
            return None
        root = self.endpoint.rstrip("/").removesuffix("/v1")
        paths = [self._tokenizer] if self._tokenizer else ["extras", "llama.cpp"]
        for kind in paths:
            try:
                if kind == "extras":
                    reply = await self._quick.post(
                        f"{root}/extras/tokenize/count", body={"input": text}, cast_to=object
                    )
                    count = reply.get("count") if isinstance(reply, dict) else None
                else:
                    reply = await self._quick.post(f"{root}/tokenize", body={"content": text}, cast_to=object)
                    tokens = reply.get("tokens") if isinstance(reply, dict) else None
                    count = len(tokens) if isinstance(tokens, list) else None
            except openai.OpenAIError:
                count = None
            if isinstance(count, int):
                self._tokenizer = kind
                return count
        if self._tokenizer is None:
            self._tokenizer = "none"
            log.info(
                "LLM endpoint has no tokenizer endpoint; estimating tokens", extra={"endpoint": self.endpoint}
            )
        return None

    async def server_context(self) -> int | None:
        """The context length the server reports (llama.cpp ``/props``, vLLM ``/models``), or None."""
        root = self.endpoint.rstrip("/").removesuffix("/v1")
        answers: list[Any] = []
        for url in (f"{root}/props", "/models"):
            try:
                answers.append(await self._quick.get(url, cast_to=object))
            except openai.OpenAIError:
                answers.append(None)
        return context_from_server(*answers)

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        temperature: float,
        n_templates: int,
        seed: int | None,
        formats: Mapping[str, dict[str, Any]] | None = None,
    ) -> Completion:
        """The model's reply to ``messages``, through the cache when one is configured.

        ``formats``: the reply's response_format per dialect (the keys of :data:`RESPONSE_FORMATS`)
        when it is not a list of templates, e.g. descriptions per class.
        Raises :class:`LLMUnavailable`, :class:`LLMAuthFailed` or :class:`LLMRejected`.
        """
        cache_key = None
        if self.cache is not None:
            keyed: dict[str, Any] = {
                "model": self.config.model,
                "messages": [[m.role, m.content] for m in messages],
                "temperature": temperature,
                "n": n_templates,
                "seed": seed,
                "format": self._formats[0] if self._formats else "text",
            }
            if formats is not None:  # only then: the keys of template replies stay as they were
                keyed["schema"] = formats.get(self._formats[0]) if self._formats else None
            cache_key = ResponseCache.key(keyed)
            hit = self.cache.get(cache_key)
            if hit is not None:
                metrics.record_attempt(self.config.model, "cached", None)
                hit.cached, hit.llm_calls, hit.prompt_tokens, hit.completion_tokens = True, 0, 0, 0
                hit.latency_seconds = 0.0
                return hit
        start = time.perf_counter()
        completion = await self._complete_uncached(messages, temperature, seed, formats)
        completion.latency_seconds = time.perf_counter() - start
        metrics.record_tokens(self.config.model, completion.prompt_tokens, completion.completion_tokens)
        if self.cache is not None and cache_key is not None:
            self.cache.put(cache_key, completion)
        return completion

    async def _complete_uncached(
        self,
        messages: list[ChatMessage],
        temperature: float,
        seed: int | None,
        formats: Mapping[str, dict[str, Any]] | None = None,
    ) -> Completion:
        refused: list[str] = []
        for name in list(self._formats):
            try:
                completion = await self._call(
                    messages, temperature, seed, response_format=name, formats=formats
                )
            except _FormatRefused as exc:
                if self.config.structured_output != "auto":
                    raise LLMRejected(
                        f"the LLM endpoint {self.endpoint} refused response_format {name} "
                        f"(HTTP {exc.status}); set structured_output to auto or off"
                    ) from None
                refused.append(name)
                continue
            self._forget(refused)
            return completion
        completion = await self._call(messages, temperature, seed, response_format=None)
        self._forget(refused)
        return completion

    def _forget(self, refused: list[str]) -> None:
        # Called only after a later request succeeded, so the refusals were about the format.
        for name in refused:
            if name in self._formats:
                self._formats.remove(name)
                log.info(
                    "LLM endpoint refuses a structured-output dialect; not asking for it again",
                    extra={"endpoint": self.endpoint, "format": name},
                )

    async def _call(
        self,
        messages: list[ChatMessage],
        temperature: float,
        seed: int | None,
        *,
        response_format: str | None,
        formats: Mapping[str, dict[str, Any]] | None = None,
    ) -> Completion:
        """One completion with retries; raises a domain error when it cannot get one."""
        kwargs: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": temperature,
        }
        if seed is not None:
            kwargs["seed"] = seed
        if self.config.max_tokens is not None:
            kwargs["max_tokens"] = self.config.max_tokens
        if response_format is not None:
            kwargs["response_format"] = (formats or RESPONSE_FORMATS)[response_format]
        model = self.config.model
        attempt = 0
        while True:
            start = time.perf_counter()
            retry_after: float | None = None
            try:
                response = await self.client.chat.completions.create(**kwargs)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                metrics.record_attempt(model, "auth", time.perf_counter() - start)
                # Upstream text may echo part of the key: write our own message instead.
                raise LLMAuthFailed(
                    f"the LLM endpoint {self.endpoint} refused the credentials (HTTP {exc.status_code}); "
                    "check the API key (--llm-api-key-file, PROMPTCLIMB_OPTIMIZER_LLM_API_KEY "
                    "or OPENAI_API_KEY)"
                ) from None
            except openai.APITimeoutError:
                metrics.record_attempt(model, "timeout", time.perf_counter() - start)
                reason = f"timed out after {self.config.timeout_seconds:g} s"
            except openai.APIConnectionError:
                metrics.record_attempt(model, "error", time.perf_counter() - start)
                reason = "connection failed"
            except openai.APIStatusError as exc:
                status = exc.status_code
                outcome = "rate_limited" if status == 429 else "error"
                metrics.record_attempt(model, outcome, time.perf_counter() - start)
                if status == 400 and is_context_rejection(_error_code(exc), _error_message(exc)):
                    limit, requested, prompt = parse_context_rejection(_error_message(exc))
                    raise ContextTooLong(
                        f"the LLM endpoint {self.endpoint} refused the request's length: "
                        f"{redact(_error_message(exc), self.config.api_key)}",
                        limit=limit,
                        requested=requested,
                        prompt=prompt,
                    ) from None
                if response_format is not None and _refuses_format(exc):
                    raise _FormatRefused(status) from None
                if status == 429 and _error_code(exc) == "insufficient_quota":
                    raise LLMRejected(
                        f"the LLM endpoint {self.endpoint} reports the account's quota is used up (HTTP 429)"
                    ) from None
                if status not in _RETRYABLE_STATUS and status < 500:
                    raise LLMRejected(
                        f"the LLM endpoint {self.endpoint} rejected the request (HTTP {status}): "
                        f"{redact(_error_message(exc), self.config.api_key)}"
                    ) from None
                reason = f"HTTP {status}"
                retry_after = retry_after_seconds(exc.response.headers)
            else:
                metrics.record_attempt(model, "ok", time.perf_counter() - start)
                return _to_completion(response, model, structured=response_format is not None)

            if retry_after is not None and retry_after > self.config.retry_after_max_seconds:
                raise LLMUnavailable(
                    f"the LLM endpoint {self.endpoint} asks to wait {retry_after:g} s (Retry-After), "
                    f"more than the {self.config.retry_after_max_seconds:g} s this server waits",
                    retry_after_seconds=retry_after,
                )
            if attempt >= self.config.max_retries:
                raise LLMUnavailable(
                    f"the LLM endpoint {self.endpoint} failed {attempt + 1} times, last: {reason}",
                    retry_after_seconds=retry_after,
                )
            delay = self.backoff(attempt, retry_after)
            log.warning(
                "LLM request failed; retrying",
                extra={"reason": reason, "attempt": attempt + 1, "delay_seconds": round(delay, 3)},
            )
            await asyncio.sleep(delay)
            attempt += 1

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Delay before retry ``attempt + 1``: the server's Retry-After, else exponential."""
        if retry_after is not None:
            return retry_after
        return min(self.config.backoff_initial_seconds * 2.0**attempt, self.config.backoff_max_seconds)


class _FormatRefused(Exception):
    """The backend answered a request with a response_format by 400/422."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _refuses_format(exc: openai.APIStatusError) -> bool:
    """Whether an error answers the response_format rather than the request as a whole.

    400/422 are refusals; llama-cpp-python's server reports its validation errors as 500, naming
    the field, so a 5xx that names response_format is one too (retrying it would only repeat it).
    """
    if exc.status_code in _REFUSES_FORMAT_STATUS:
        return True
    return exc.status_code >= 500 and "response_format" in _error_message(exc)


def _error_code(exc: openai.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return str(inner["code"])
    return None


def _error_message(exc: openai.APIStatusError) -> str:
    """The upstream's own error text, shortened (it goes into a status message)."""
    body = exc.body
    text = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = str(inner.get("message", "")) if isinstance(inner, dict) else str(inner)
    elif body is not None:
        text = str(body)
    return (text or exc.response.reason_phrase or "no detail")[:300]


def _to_completion(response: Any, model: str, *, structured: bool) -> Completion:
    """Our :class:`Completion` from an openai ``ChatCompletion`` (tolerating missing fields)."""
    text, finish_reason = "", ""
    if response.choices:
        text = response.choices[0].message.content or ""
        finish_reason = str(getattr(response.choices[0], "finish_reason", "") or "")
    usage = response.usage
    return Completion(
        text=text,
        model=response.model or model,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        structured=structured,
        finish_reason=finish_reason,
    )
