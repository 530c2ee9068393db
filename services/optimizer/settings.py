"""Optimizer settings: env prefix ``PROMPTCLIMB_OPTIMIZER_``, overridden by command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from promptclimb.common.settings import ServerSettings


class OptimizerSettings(ServerSettings):
    """The gRPC server plus the chat-LLM endpoint it asks for templates.

    The API key comes from the file named by ``llm_api_key_file`` (a mounted secret) when one is
    named, else ``PROMPTCLIMB_OPTIMIZER_LLM_API_KEY``, else ``OPENAI_API_KEY``. It is a
    ``SecretStr``: it prints as ``**********`` and is never logged.
    """

    model_config = SettingsConfigDict(
        env_prefix="PROMPTCLIMB_OPTIMIZER_", extra="ignore", populate_by_name=True
    )

    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1; unset = OpenAI"
    )
    llm_model: str = Field("gpt-4o-mini", min_length=1, description="Model name sent with every request")
    llm_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("llm_api_key", "PROMPTCLIMB_OPTIMIZER_LLM_API_KEY", "OPENAI_API_KEY"),
        description="API key (local servers need none)",
    )
    llm_api_key_file: Path | None = Field(None, description="File holding the API key (a mounted secret)")
    temperature: float = Field(
        1.0, ge=0.0, le=2.0, description="Sampling temperature when a request sets none"
    )
    max_tokens: int | None = Field(512, gt=0, description="Cap on completion tokens per call; unset = no cap")
    llm_context_tokens: int | None = Field(
        None,
        gt=0,
        description="The endpoint's context window in tokens; unset = what the server reports "
        "(llama.cpp /props, vLLM /models), else 8192 until a rejection names the real one",
    )
    timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Timeout of one HTTP request to the LLM",
        json_schema_extra={"cli_flag": "--timeout"},
    )
    max_retries: int = Field(
        4, ge=0, le=20, description="Retries on 429, 5xx, timeouts and connection errors"
    )
    backoff_initial_seconds: float = Field(0.5, ge=0, description="First retry delay; doubles per retry")
    backoff_max_seconds: float = Field(8.0, ge=0, description="Largest retry delay")
    retry_after_max_seconds: float = Field(
        60.0, ge=0, description="Longest Retry-After honoured; a longer one fails the call with UNAVAILABLE"
    )
    structured_output: Literal["auto", "json_schema", "json_object", "off"] = Field(
        "auto",
        description="response_format dialect for JSON replies; auto tries json_schema, json_object, "
        "then plain text, remembering what the endpoint refused",
    )
    cache_dir: Path | None = Field(None, description="On-disk response cache; unset = no cache")
    max_template_chars: int = Field(200, gt=0, description="Longest template accepted")
    probe_endpoint: bool = Field(True, description="Log at start-up whether the LLM endpoint answers /models")

    @model_validator(mode="after")
    def _key_from_file(self) -> OptimizerSettings:
        # A key file is named on purpose (flag or mounted secret), so it wins over a stray env key.
        if self.llm_api_key_file is not None:
            try:
                key = self.llm_api_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"cannot read llm_api_key_file {self.llm_api_key_file}: {exc.strerror}"
                ) from None
            self.llm_api_key = SecretStr(key) if key else None
        return self
