"""Client channels to our own services: TLS, size limits, round-robin for multi-target names."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class ClientTLS:
    """How a client verifies a server (CA bundle) and, for mTLS, proves itself (cert + key)."""

    ca: Path | None = None  # None with TLS on: the system's trusted roots
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # expected name in the server certificate, if not the target host

    def kwargs(self) -> dict[str, object]:
        """Keyword arguments of :func:`open_channel`."""
        return {
            "tls_ca": self.ca,
            "tls_cert": self.cert,
            "tls_key": self.key,
            "tls_server_name": self.server_name,
        }


def open_channel(
    target: str,
    *,
    max_message_bytes: int = 16 * 1024 * 1024,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_server_name: str | None = None,
) -> grpc.aio.Channel:
    """An aio channel to ``target``.

    TLS when a CA (or a client certificate) is given, mTLS when a cert/key pair is too; plaintext
    otherwise. A certificate without its key (or the reverse) is an error, not a silent downgrade.
    """
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("a client certificate needs both tls_cert and tls_key")
    resolved, many = normalise_target(target)
    options = channel_options(max_message_bytes, round_robin=many)
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    if tls_ca is None and tls_cert is None:
        return grpc.aio.insecure_channel(resolved, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls_ca.read_bytes() if tls_ca else None,
        private_key=tls_key.read_bytes() if tls_key else None,
        certificate_chain=tls_cert.read_bytes() if tls_cert else None,
    )
    return grpc.aio.secure_channel(resolved, creds, options=options)
