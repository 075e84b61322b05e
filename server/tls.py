"""TLS for the gRPC port: server credentials, and mutual TLS for service callers.

``cardmint serve --tls-cert FILE --tls-key FILE [--client-ca FILE]`` serves TLS only (no
plaintext port beside it). With ``--client-ca`` every connection must present a client
certificate signed by that CA (mutual TLS); the bearer token is still required on every
call: the certificate says which service connects, the token what it may do.

The files are PEM. They are checked when the server starts, not at the first handshake:
the certificate and key must match and parse, the key must not be readable by group or
others, the CA file must hold at least one certificate.
"""

from __future__ import annotations

import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TlsError", "TlsFiles", "server_credentials"]


class TlsError(ValueError):
    """A TLS file is missing, unreadable, malformed or too open (a configuration error)."""


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate chain and private key; ``client_ca``: require client
    certificates signed by it (mutual TLS), or None for server-side TLS only."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TlsError(f"{what} {path}: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{what} {path} is not PEM (no -----BEGIN line)")
    return data


def _check_private(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise TlsError(f"{what} {path}: {e.strerror or e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TlsError(
            f"{what} {path} is readable by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )


def _check_pair(cert: Path, key: Path, what: str) -> None:
    """Parses both and checks the key belongs to the certificate (the ssl module does)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise TlsError(f"{what} {cert} and key {key} do not make a pair: {e.reason or e}") from None
    except OSError as e:
        raise TlsError(f"{what} {cert} / {key}: {e.strerror or e}") from None


def _check_ca(path: Path, what: str) -> bytes:
    data = _read(path, what)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as e:
        raise TlsError(f"{what} {path} holds no usable certificate: {e}") from None
    return data


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    cert, key = _read(tls.cert, "certificate"), _read(tls.key, "private key")
    _check_private(tls.key, "private key")
    _check_pair(tls.cert, tls.key, "certificate")
    ca = _check_ca(tls.client_ca, "client CA") if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )
