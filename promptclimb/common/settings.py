"""Settings shared by every service: one pydantic-settings class per concern.

Values come from, in rising priority: defaults, environment variables (one prefix per service,
e.g. ``PROMPTCLIMB_SCORER_PORT``), then command-line flags (passed as keyword arguments).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """How a gRPC service listens, shuts down and exposes metrics."""

    model_config = SettingsConfigDict(env_prefix="PROMPTCLIMB_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the gRPC server binds to")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one (printed)")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; unset = no metrics server, 0 = any"
    )
    grace_seconds: float = Field(10.0, ge=0, description="Graceful-shutdown grace on SIGTERM")
    log_level: str = Field("INFO", description="Python logging level")
    log_json: bool = Field(True, description="One JSON object per log line")
    max_message_bytes: int = Field(16 * 1024 * 1024, gt=0, description="Largest gRPC message accepted/sent")
    max_connection_age_seconds: float | None = Field(
        None, gt=0, description="Close client connections after this age so new pods are picked up"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain; enables TLS")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle; requires client certificates (mTLS)")


S = TypeVar("S", bound=BaseSettings)


def with_overrides(cls: type[S], **flags: Any) -> S:
    """Build settings where flags that were given (not None) override env and defaults."""
    return cls(**{k: v for k, v in flags.items() if v is not None})


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every ``promptclimb serve SERVICE`` takes (the :class:`ServerSettings` fields)."""
    g = parser.add_argument_group("server")
    g.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 in a pod)")
    g.add_argument("--port", type=int, help="gRPC port; 0 picks a free one (printed)")
    g.add_argument("--metrics-port", type=int, help="Prometheus /metrics port; 0 picks a free one")
    g.add_argument("--grace-seconds", type=float, help="graceful-stop grace after SIGTERM (10)")
    g.add_argument("--max-message-bytes", type=int, help="largest gRPC message in or out (16 MiB)")
    g.add_argument("--tls-cert", type=Path, help="PEM certificate chain; enables TLS")
    g.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    g.add_argument("--tls-client-ca", type=Path, help="PEM CA of client certificates; requires them (mTLS)")
    g.add_argument("--log-level", help="DEBUG, INFO, WARNING…")


def server_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The values of :func:`add_server_arguments`' flags, for :func:`with_overrides`."""
    names = (
        "host", "port", "metrics_port", "grace_seconds", "max_message_bytes",
        "tls_cert", "tls_key", "tls_client_ca", "log_level",
    )  # fmt: skip
    return {name: getattr(args, name, None) for name in names}
