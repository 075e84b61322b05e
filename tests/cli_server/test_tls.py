"""TLS and mutual TLS on 127.0.0.1, with a throwaway CA made for the test.

* TLS: a client that trusts the CA gets answers; one that trusts another CA, or speaks
  plaintext, gets none; the bearer token is still required.
* Mutual TLS (``client_ca``): no client certificate, or one from another CA, is refused
  at the handshake; the CA's client certificate gets through (and still needs a token).
* ``cardmint serve --tls-cert/--tls-key/--client-ca`` and the CLI's ``--tls-ca/--tls-cert/
  --tls-key``: a real server process and a real CLI call over mutual TLS; bad files (a key
  readable by others, a key of another certificate) are refused before the server starts.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cardmint.client import Client, Unauthenticated, tls_credentials
from cardmint.server.app import Running, start
from cardmint.server.tls import TlsError, TlsFiles, server_credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conftest import CLI_TIMEOUT, cli_env

# Transport only, whatever the storage: the in-process servers run on SQLite.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])

_NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # another CA: its client certificate must not get in
    rogue_cert: Path
    rogue_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - dt.timedelta(minutes=5))
        .not_valid_after(_NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - dt.timedelta(minutes=5))
        .not_valid_after(_NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(ca[1], hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, rogue = _ca("cardmint test CA"), _ca("somebody else's CA")
    files: dict[str, Path] = {}
    for name, (cert, key) in {
        "server": _leaf("cardmint server", ca, server=True),
        "client": _leaf("orders-service", ca, server=False),
        "rogue": _leaf("orders-service", rogue, server=False),
    }.items():
        files[f"{name}_cert"] = d / f"{name}.pem"
        files[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}_key"] = d / f"{name}.key"
        _write_key(files[f"{name}_key"], key)
    for name, (cert, _) in {"ca": ca, "rogue_ca": rogue}.items():
        files[name] = d / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Pki(**files)


def _server(storage_url: str, tmp_path: Path, tls: TlsFiles) -> Iterator[Running]:
    running = start(
        storage_url, "127.0.0.1:0", tmp_path / "var", workers=4, tls=tls, health_listen="127.0.0.1:0"
    )
    try:
        yield running
    finally:
        running.stop(grace=0)


@pytest.fixture
def tls_server(storage_url: str, tmp_path: Path, pki: Pki) -> Iterator[Running]:
    yield from _server(storage_url, tmp_path, TlsFiles(pki.server_cert, pki.server_key))


@pytest.fixture
def mtls_server(storage_url: str, tmp_path: Path, pki: Pki) -> Iterator[Running]:
    yield from _server(storage_url, tmp_path, TlsFiles(pki.server_cert, pki.server_key, pki.ca))


def _health(channel: grpc.Channel) -> int:
    req = health_pb2.HealthCheckRequest()
    return int(health_pb2_grpc.HealthStub(channel).Check(req, timeout=5).status)


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        _health(channel)
    return err.value.code()


def _products(server: Running, tls: grpc.ChannelCredentials, token: str | None = None) -> int:
    token = token if token is not None else server.domain.auth.create_token("admin").token
    with Client(f"127.0.0.1:{server.port}", token, tls=tls, retries=0, timeout=5) as client:
        return len(list(client.list_products()))


@sqlite_only
def test_tls_answers_clients_that_trust_its_ca_only(tls_server: Running, pki: Pki) -> None:
    for addr in (f"127.0.0.1:{tls_server.port}", f"127.0.0.1:{tls_server.health_port}"):  # both ports
        with grpc.secure_channel(addr, tls_credentials(pki.ca)) as ch:
            assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
        with grpc.secure_channel(addr, tls_credentials(pki.rogue_ca)) as ch:
            assert _refused(ch) == grpc.StatusCode.UNAVAILABLE  # the server's certificate is not trusted
        with grpc.insecure_channel(addr) as ch:
            assert _refused(ch) == grpc.StatusCode.UNAVAILABLE  # no plaintext beside TLS
    assert _products(tls_server, tls_credentials(pki.ca)) == 0
    with pytest.raises(Unauthenticated):
        _products(tls_server, tls_credentials(pki.ca), token="not-a-token")  # TLS is not a login


@sqlite_only
def test_mutual_tls_wants_a_client_certificate_from_its_ca(mtls_server: Running, pki: Pki) -> None:
    good = tls_credentials(pki.ca, pki.client_cert, pki.client_key)
    for addr in (f"127.0.0.1:{mtls_server.port}", f"127.0.0.1:{mtls_server.health_port}"):  # both ports
        for creds in (tls_credentials(pki.ca), tls_credentials(pki.ca, pki.rogue_cert, pki.rogue_key)):
            with grpc.secure_channel(addr, creds) as ch:
                assert _refused(ch) == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(addr, good) as ch:
            assert _health(ch) == health_pb2.HealthCheckResponse.SERVING
    assert _products(mtls_server, good) == 0
    with pytest.raises(Unauthenticated):
        _products(mtls_server, good, token="not-a-token")


def test_bad_tls_files_are_refused_before_serving(pki: Pki, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(pki.server_key.read_bytes())
    loose.chmod(0o644)
    cases = {
        "readable by group or others": TlsFiles(pki.server_cert, loose),
        "do not make a pair": TlsFiles(pki.server_cert, pki.client_key),
        "is not PEM": TlsFiles(pki.server_cert, pki.server_key, tmp_path / "empty.pem"),
        "No such file": TlsFiles(tmp_path / "missing.pem", pki.server_key),
    }
    (tmp_path / "empty.pem").write_text("nothing here\n")
    for why, files in cases.items():
        with pytest.raises(TlsError, match=why):
            server_credentials(files)


def test_serve_and_the_cli_over_mutual_tls(pki: Pki, tmp_path: Path, bindir: Path) -> None:
    """The real ``cardmint serve`` with TLS flags, and a CLI call through it."""
    env = cli_env(bindir, PYTHONUNBUFFERED="1")
    bad = subprocess.run(
        ["cardmint", "serve", "--listen", "127.0.0.1:0", "--tls-cert", str(pki.server_cert)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "tls_key" in bad.stderr
    mismatched = subprocess.run(
        ["cardmint", "serve", "--listen", "127.0.0.1:0",
         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    assert mismatched.returncode == 2 and "do not make a pair" in mismatched.stderr
    assert not (tmp_path / "var").exists()  # refused before anything was created

    proc = subprocess.Popen(
        ["cardmint", "serve", "--listen", "127.0.0.1:0", "--tls-cert", str(pki.server_cert),
         "--tls-key", str(pki.server_key), "--client-ca", str(pki.ca)],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        port, deadline = 0, time.monotonic() + 60
        while time.monotonic() < deadline and not port:
            line = proc.stderr.readline()
            if not line:
                break
            if m := re.search(r"serving on 127\.0\.0\.1:(\d+) \(mutual TLS;", line):
                port = int(m.group(1))
        assert port, "the server did not start over mutual TLS"
        token = subprocess.run(
            [sys.executable, "-m", "cardmint.cli", "token", "create", "--role", "admin"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True,
        ).stdout.strip()  # fmt: skip
        common = ["--server", f"127.0.0.1:{port}", "--token", token]

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["cardmint", *args, *common], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
            )  # fmt: skip

        made = cli(
            "product", "create", "--sku", "TLS-1", "--name", "Over TLS", "--currency", "EUR",
            "--denominations", "25", "--tls-ca", str(pki.ca),
            "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        listed = cli(
            "product", "list", "--tls-ca", str(pki.ca),
            "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
        )  # fmt: skip
        assert listed.returncode == 0 and "TLS-1" in listed.stdout, listed.stderr
        no_cert = cli("product", "list", "--tls-ca", str(pki.ca))
        assert no_cert.returncode != 0 and "TLS-1" not in no_cert.stdout
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        if proc.stderr is not None:
            proc.stderr.close()
