"""Client channels to our own services: TLS, size limits, round-robin for multi-target names."""

from __future__ import annotations

from pathlib import Path

import grpc

from promptclimb.common.server import channel_options


def normalise_target(target: str) -> tuple[str, bool]:
    """Turn ``host:port``, ``a:1,b:2`` or ``dns:///name:port`` into a gRPC target.

    Returns the target and whether it may resolve to several addresses (then use round_robin).
    A comma-separated list becomes an ``ipv4:``/``ipv6:`` multi-address target.
    """
    target = target.strip()
    if "," in target:
        parts = [p.strip() for p in target.split(",") if p.strip()]
        hosts = []
        for p in parts:
            host = p.rsplit(":", 1)[0]
            if host in ("localhost",):
                p = "127.0.0.1:" + p.rsplit(":", 1)[1]
            hosts.append(p)
        scheme = "ipv6" if all(h.startswith("[") for h in hosts) else "ipv4"
        return f"{scheme}:{','.join(hosts)}", True
    return target, target.startswith("dns:")


def open_channel(
    target: str,
    *,
    max_message_bytes: int = 16 * 1024 * 1024,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_server_name: str | None = None,
) -> grpc.aio.Channel:
    """An aio channel to ``target``; TLS when a CA is given, mTLS when a cert/key pair is too."""
    resolved, many = normalise_target(target)
    options = channel_options(max_message_bytes, round_robin=many)
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    if tls_ca is None:
        return grpc.aio.insecure_channel(resolved, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls_ca.read_bytes(),
        private_key=tls_key.read_bytes() if tls_key else None,
        certificate_chain=tls_cert.read_bytes() if tls_cert else None,
    )
    return grpc.aio.secure_channel(resolved, creds, options=options)
