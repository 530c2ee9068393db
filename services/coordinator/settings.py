"""Coordinator settings (env prefix ``PROMPTCLIMB_COORDINATOR_``; flags override)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from promptclimb.common.channels import ClientTLS
from promptclimb.common.settings import ServerSettings


class CoordinatorSettings(ServerSettings):
    """Where the scorer, optimizer and store are, and how hard to push them.

    The API token comes from the file named by ``auth_token_file`` (a mounted secret) when one is
    named, else ``PROMPTCLIMB_COORDINATOR_AUTH_TOKEN``. It is a ``SecretStr``: never printed.
    """

    model_config = SettingsConfigDict(env_prefix="PROMPTCLIMB_COORDINATOR_", extra="ignore")

    scorer: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:50051"],
        description="Scorer model (repeatable) [MODEL_ID=]TARGET; TARGET is host:port, an a,b list or "
        "dns:///name; the one without MODEL_ID (else the first) is the default model; the env value "
        "lists them separated by spaces",
    )
    model_check_seconds: float = Field(
        30.0, gt=0, description="How often each scorer target is asked which model it serves"
    )
    optimizer: str = Field("127.0.0.1:50052", description="Optimizer target")
    store: str = Field("promptclimb.db", description="SQLite file path or any SQLAlchemy URL")
    chunk_size: int = Field(16, gt=0, description="Templates per EvaluatePrompts call")
    max_concurrent_chunks: int = Field(4, gt=0, description="EvaluatePrompts calls in flight per search")
    scorer_deadline_seconds: float = Field(60.0, gt=0, description="Deadline of one scorer call")
    optimizer_deadline_seconds: float = Field(180.0, gt=0, description="Deadline of one optimizer call")
    max_attempts: int = Field(6, gt=0, description="Tries per call on UNAVAILABLE / RESOURCE_EXHAUSTED")
    backoff_seconds: float = Field(0.2, gt=0, description="First retry delay (doubles, capped at 5 s)")
    scorer_ready_wait_seconds: float = Field(
        3600.0,
        gt=0,
        description="How long a search waits for a dataset the scorer is still computing the image "
        "features of (UNAVAILABLE naming the dataset; counts no attempt)",
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="Search lease; a dead replica's searches resume after it"
    )
    max_running_searches: int = Field(8, gt=0, description="Searches run at once by this replica")
    max_pending_searches: int = Field(
        1000,
        gt=0,
        description="Searches waiting to run (PENDING, counted in the store over every replica); "
        "StartSearch past it is RESOURCE_EXHAUSTED with a retry delay",
    )
    search_stall_seconds: float = Field(
        1800.0,
        gt=0,
        description="A running search that finishes no iteration for this long is stalled: the "
        "PromptclimbSearchStalled alert reads it from promptclimb_coordinator_search_stall_threshold_seconds",
    )
    llm_prices: list[str] = Field(
        default_factory=list,
        description="LLM prices (repeatable) MODEL=USD_PER_1K_PROMPT,USD_PER_1K_COMPLETION, e.g. "
        "gpt-4o-mini=0.00015,0.0006; MODEL * prices every other model; unset = cost 0",
        json_schema_extra={"cli_flag": "--llm-price"},
    )
    replica_id: str | None = Field(None, description="Lease owner name (default: host-pid-random)")
    auth_token: SecretStr | None = Field(
        None, description="Bearer token required on the public API (health stays open); unset = no check"
    )
    auth_token_file: Path | None = Field(None, description="File holding the bearer token (a mounted secret)")
    upstream_tls_ca: Path | None = Field(
        None, description="PEM CA that signs the scorer/optimizer certificates; enables TLS to them"
    )
    upstream_tls_cert: Path | None = Field(
        None, description="Client certificate for mTLS to scorer/optimizer"
    )
    upstream_tls_key: Path | None = Field(None, description="Key of upstream_tls_cert")
    upstream_tls_server_name: str | None = Field(
        None, description="Name expected in the scorer/optimizer certificates, if not the target host"
    )

    @field_validator("scorer", mode="before")
    @classmethod
    def _scorer_split(cls, value: object) -> object:
        return value.split() if isinstance(value, str) else value  # the env form: space separated

    @field_validator("scorer")
    @classmethod
    def _scorer_parse(cls, values: list[str]) -> list[str]:
        parse_scorer_entries(values)  # raises ValueError naming the bad entry
        return values

    def scorer_entries(self) -> list[ModelEntry]:
        """``scorer`` as model entries."""
        return parse_scorer_entries(self.scorer)

    @field_validator("llm_prices")
    @classmethod
    def _prices_parse(cls, values: list[str]) -> list[str]:
        parse_prices(values)  # raises ValueError naming the bad entry
        return values

    def prices(self) -> dict[str, tuple[float, float]]:
        """``llm_prices`` as model -> (USD per 1k prompt tokens, USD per 1k completion tokens)."""
        return parse_prices(self.llm_prices)

    @model_validator(mode="after")
    def _token_from_file(self) -> CoordinatorSettings:
        # A token file is named on purpose (flag or mounted secret), so it wins over the env value.
        if self.auth_token_file is not None:
            try:
                token = self.auth_token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"cannot read auth_token_file {self.auth_token_file}: {exc.strerror}"
                ) from None
            if not token:
                raise ValueError(f"auth_token_file {self.auth_token_file} is empty")
            self.auth_token = SecretStr(token)
        return self

    def upstream_tls(self) -> ClientTLS:
        """TLS settings of the channels to the scorer and the optimizer."""
        return ClientTLS(
            self.upstream_tls_ca, self.upstream_tls_cert, self.upstream_tls_key, self.upstream_tls_server_name
        )


def parse_prices(entries: list[str]) -> dict[str, tuple[float, float]]:
    """``["m=0.1,0.2"]`` -> ``{"m": (0.1, 0.2)}``; raises ValueError for a malformed or negative entry."""
    prices: dict[str, tuple[float, float]] = {}
    for entry in entries:
        model, sep, pair = entry.rpartition("=")
        parts = pair.split(",")
        try:
            if not sep or not model or len(parts) != 2:
                raise ValueError
            prompt, completion = (float(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"llm price {entry!r}: want MODEL=USD_PER_1K_PROMPT,USD_PER_1K_COMPLETION"
            ) from None
        if min(prompt, completion) < 0:
            raise ValueError(f"llm price {entry!r}: prices must not be negative")
        prices[model] = (prompt, completion)
    return prices


MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # as the scorer derives them: bounded labels


@dataclass(frozen=True)
class ModelEntry:
    """One ``[MODEL_ID=]TARGET`` of the coordinator's ``--scorer``; ``id`` "" = learn it from the scorer."""

    id: str
    target: str


def parse_scorer_entries(values: Sequence[str]) -> list[ModelEntry]:
    """``--scorer`` values as entries; ValueError naming the bad one (ids unique, one bare target)."""
    entries: list[ModelEntry] = []
    for value in values:
        # A target never holds "=" (host:port, a,b list, dns:///name), so the first "=" splits.
        model, sep, target = value.strip().partition("=")
        if not sep:
            model, target = "", model
        elif not MODEL_ID.fullmatch(model):
            raise ValueError(f"scorer {value!r}: model id must match {MODEL_ID.pattern}")
        if not target:
            raise ValueError(f"scorer {value!r}: no target")
        entries.append(ModelEntry(model, target))
    if not entries:
        raise ValueError("at least one scorer target is needed")
    if sum(1 for e in entries if not e.id) > 1:
        raise ValueError("at most one scorer target without a model id (the default model)")
    ids = [e.id for e in entries if e.id]
    if len(ids) != len(set(ids)):
        raise ValueError(f"a model id is listed twice: {', '.join(sorted(ids))}")
    return entries
