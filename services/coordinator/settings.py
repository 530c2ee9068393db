"""Coordinator settings (env prefix ``PROMPTCLIMB_COORDINATOR_``; flags override)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from promptclimb.common.settings import ServerSettings


class CoordinatorSettings(ServerSettings):
    """Where the scorer, optimizer and store are, and how hard to push them."""

    model_config = SettingsConfigDict(env_prefix="PROMPTCLIMB_COORDINATOR_", extra="ignore")

    scorer: str = Field("127.0.0.1:50051", description="Scorer target: host:port, a,b list or dns:///name")
    optimizer: str = Field("127.0.0.1:50052", description="Optimizer target")
    store: str = Field("promptclimb.db", description="SQLite file path or any SQLAlchemy URL")
    chunk_size: int = Field(16, gt=0, description="Templates per EvaluatePrompts call")
    max_concurrent_chunks: int = Field(4, gt=0, description="EvaluatePrompts calls in flight per search")
    scorer_deadline_seconds: float = Field(60.0, gt=0, description="Deadline of one scorer call")
    optimizer_deadline_seconds: float = Field(180.0, gt=0, description="Deadline of one optimizer call")
    max_attempts: int = Field(6, gt=0, description="Tries per call on UNAVAILABLE / RESOURCE_EXHAUSTED")
    backoff_seconds: float = Field(0.2, gt=0, description="First retry delay (doubles, capped at 5 s)")
    lease_seconds: float = Field(
        30.0, gt=0, description="Search lease; a dead replica's searches resume after it"
    )
    max_running_searches: int = Field(8, gt=0, description="Searches run at once by this replica")
    replica_id: str | None = Field(None, description="Lease owner name (default: host-pid-random)")
