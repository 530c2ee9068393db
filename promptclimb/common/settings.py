"""Settings shared by every service: one pydantic-settings class per concern.

Values come from, in rising priority: defaults, environment variables (one prefix per service,
e.g. ``PROMPTCLIMB_SCORER_PORT``), then command-line flags. The flags are derived from the
fields (:func:`add_settings_arguments`), so a new setting is one edit: its field.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import Field, SecretStr
from pydantic.fields import FieldInfo
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


def flag_of(name: str, info: FieldInfo) -> str:
    """The command-line flag of a settings field: ``--field-name``, or its ``cli_flag`` override."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("cli_flag") or "--" + name.replace("_", "-"))


def _argument_kwargs(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field type: its converter, choices, and repetition for lists."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        annotation, args = args[0], list(get_args(args[0]))
    origin = get_origin(annotation)
    if origin is Literal:
        return {"choices": list(args)}
    if origin is list:
        return {"action": "append", **_argument_kwargs(args[0] if args else str)}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, Path):
        return {"type": annotation}
    return {}


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[BaseSettings]) -> None:
    """One flag per field of ``cls``, its help text from the field's description.

    Every flag defaults to None ("not given"), so :func:`settings_from_args` lets only the flags on
    the command line override the environment. Secrets get no flag (argv is visible to every user
    of the machine): they come from the environment or from their ``*_file`` setting.
    """
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    server = parser.add_argument_group("server")
    service = parser.add_argument_group(cls.__name__.removesuffix("Settings").lower() or "settings")
    for name, info in cls.model_fields.items():
        if info.annotation is SecretStr or SecretStr in get_args(info.annotation):
            continue
        group = server if name in ServerSettings.model_fields else service
        default = info.get_default(call_default_factory=True)
        shown = "" if default in (None, [], "") else f"; default {default}"
        group.add_argument(
            flag_of(name, info),
            dest=name,
            default=None,
            help=f"{info.description or name}{shown} (env {prefix}{name.upper()})".replace("%", "%%"),
            **_argument_kwargs(info.annotation),
        )


def settings_from_args(cls: type[S], args: argparse.Namespace) -> S:
    """Settings from the flags :func:`add_settings_arguments` added; flags win over environment."""
    return with_overrides(cls, **{name: getattr(args, name, None) for name in cls.model_fields})
