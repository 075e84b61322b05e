"""The server process: health, reflection, authentication, bad input, generated code,
``cardmint token create`` and ``cardmint serve`` (first start under ./var, SIGTERM drain)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cardmint.cli import admin as admin_cli
from cardmint.client import Client, InvalidArgument, PermissionDenied, Unauthenticated, error_from
from cardmint.server.api import SERVICE_NAMES
from cardmint.server.app import Running, open_domain
from cardmint.server.domain import Unauthenticated as NotAuthenticated
from cardmint.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, keys_pb2, keys_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.grpc_helpers import Metadata, failed_call

ROOT = Path(__file__).resolve().parents[2]
Connect = Callable[..., Client]


def test_health_and_reflection_need_no_token(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICE_NAMES):
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert set(SERVICE_NAMES) | {"grpc.health.v1.Health"} <= listed
    assert "cardmint.v1.KeyService" in SERVICE_NAMES


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer nope", "Basic cm_x", "Bearer cm_" + "A" * 43]
)
def test_calls_without_a_valid_token_are_refused(
    server: Running, channel: grpc.Channel, authorization: str | None
) -> None:
    metadata: Metadata = () if authorization is None else (("authorization", authorization),)
    create = catalog_pb2_grpc.CatalogServiceStub(channel).CreateProduct
    request = catalog_pb2.CreateProductRequest(sku="ANON", name="x", currency="CNY", denominations=[100])
    with pytest.raises(grpc.RpcError) as info:
        create(request, metadata=metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert isinstance(error_from(info.value), Unauthenticated)
    # Streaming calls are guarded the same way.
    check = keys_pb2_grpc.KeyServiceStub(channel).Check
    chunk = keys_pb2.CheckRequest(codes=common_pb2.PackedStrings(data=b"ABCD", width=4))
    with pytest.raises(grpc.RpcError) as info:
        list(check(iter([chunk]), metadata=metadata, timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with server.storage.read() as tx:
        assert tx.list_products() == []  # nothing anonymous changed anything


def test_two_authorization_headers_are_refused(server: Running, channel: grpc.Channel) -> None:
    """Two ``authorization`` values (a valid one among them, in either order) are refused:
    which one a proxy in front would have checked is anybody's guess."""
    good = f"Bearer {server.domain.auth.create_token('admin').token}"
    get = catalog_pb2_grpc.CatalogServiceStub(channel).ListProducts
    assert get(catalog_pb2.ListProductsRequest(), metadata=(("authorization", good),), timeout=10) is not None
    for pair in ([good, "Bearer nope"], ["Bearer nope", good], [good, good]):
        with pytest.raises(grpc.RpcError) as info:
            get(
                catalog_pb2.ListProductsRequest(),
                metadata=tuple(("authorization", v) for v in pair),
                timeout=10,
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_each_call_is_judged_on_its_own_metadata(server: Running, channel: grpc.Channel) -> None:
    """Wrapped handlers are built once per method: a refused call, then an admitted one, then
    a refused one again on the same method each get their own answer (nothing of one call's
    metadata sticks to the handler the next call runs)."""
    good: Metadata = (("authorization", f"Bearer {server.domain.auth.create_token('admin').token}"),)
    bad: Metadata = (("authorization", "Bearer nope"),)
    get = catalog_pb2_grpc.CatalogServiceStub(channel).ListProducts
    answers = []
    for metadata in (bad, good, bad, good, (), good):
        try:
            call = get.with_call(catalog_pb2.ListProductsRequest(), metadata=metadata, timeout=10)
            answers.append(("OK", dict(call[1].trailing_metadata()).get("x-request-id")))
        except grpc.RpcError as e:
            answers.append((e.code().name, dict(failed_call(e).trailing_metadata()).get("x-request-id")))
    assert [code for code, _ in answers] == ["UNAUTHENTICATED", "OK"] * 3
    ids = [rid for _, rid in answers]
    assert all(ids) and len(set(ids)) == len(ids)  # every call its own request id
    mine = get.with_call(
        catalog_pb2.ListProductsRequest(), metadata=(*good, ("x-request-id", "mine-1")), timeout=10
    )[1]
    assert dict(mine.trailing_metadata())["x-request-id"] == "mine-1"
    again = get.with_call(catalog_pb2.ListProductsRequest(), metadata=good, timeout=10)[1]
    assert dict(again.trailing_metadata())["x-request-id"] != "mine-1"


def test_revoked_token_and_roles(server: Running, connect: Connect, addr: str) -> None:
    issued = server.domain.auth.create_token("operator")
    with Client(addr, issued.token) as operator:
        operator.create_product(sku="OP-1", name="x", currency="CNY", denominations=[100])
        admin = server.domain.auth.authenticate(f"Bearer {server.domain.auth.create_token('admin').token}")
        server.domain.auth.revoke_token(admin, issued.token_id)
        with pytest.raises(Unauthenticated):
            operator.get_product("OP-1")
    with pytest.raises(PermissionDenied):
        connect("customer", account="carol").create_product(
            sku="C-1", name="x", currency="CNY", denominations=[100]
        )


def test_bad_input_is_refused_and_the_server_lives_on(connect: Connect, channel: grpc.Channel) -> None:
    admin = connect("admin")
    token = admin._metadata
    check = keys_pb2_grpc.KeyServiceStub(channel).Check
    bad_chunks = [
        common_pb2.PackedStrings(data=b"ABCDE", width=4),  # not a multiple of the width
        common_pb2.PackedStrings(data=b"ABCD", lengths=[3]),  # lengths do not add up
        common_pb2.PackedStrings(data=b"ABCD", width=2, lengths=[2, 2]),  # both framings
    ]
    for packed in bad_chunks:
        with pytest.raises(grpc.RpcError) as info:
            list(check(iter([keys_pb2.CheckRequest(codes=packed)]), metadata=token, timeout=10))
        assert isinstance(error_from(info.value), InvalidArgument)
    with pytest.raises(InvalidArgument):
        admin.create_product(sku="X", name="x", currency="CNY", denominations=[-5])
    forged = catalog_pb2.ListProductsRequest(page=common_pb2.PageRequest(page_token="x' OR 1=1"))
    with pytest.raises(grpc.RpcError) as info:
        admin.catalog.ListProducts(forged, metadata=token, timeout=10)
    assert isinstance(error_from(info.value), InvalidArgument)
    with pytest.raises(InvalidArgument):
        admin.generate(10**12)  # far over the limit: refused, not attempted
    # Still serving, and nothing was created by any of the above.
    assert list(admin.list_products()) == []


def test_generated_code_matches_the_protos() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr


def test_drift_is_detected(tmp_path: Path) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", copy, ignore=shutil.ignore_patterns("__pycache__"))
    common = copy / "cardmint" / "v1" / "common.proto"
    common.write_text(
        common.read_text().replace("string currency = 2;", "string currency = 2;\n  int32 drift = 3;")
    )
    run = subprocess.run(
        [sys.executable, str(copy / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 1
    assert "common_pb2.py" in run.stderr


def test_token_create_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    admin_cli.add_parser(parser.add_subparsers(dest="command"))
    db = f"sqlite://{tmp_path / 'cm.db'}"
    args = parser.parse_args(["token", "create", "--role", "customer", "--account", "dave", "--db", db])
    args.var = str(tmp_path / "var")
    assert admin_cli.run(args) == 0
    token = capsys.readouterr().out.strip()
    storage, domain = open_domain(db, tmp_path / "var")
    try:
        principal = domain.auth.authenticate(f"Bearer {token}")
        assert (principal.role, principal.account) == ("customer", "dave")
    finally:
        storage.close()


def test_token_list_and_revoke_cli(
    storage_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``token list``: one line per token, oldest first, its state (active, expiring,
    expired, revoked), never a secret. ``token revoke ID``: it stops working at once,
    audited as "cli"; an unknown or revoked id exits 1 and changes nothing."""
    parser = argparse.ArgumentParser()
    admin_cli.add_parser(parser.add_subparsers(dest="command"))

    def cli(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(["token", *argv, "--db", storage_url, "--var", str(tmp_path / "var")])
        code = admin_cli.run(args)
        out = capsys.readouterr()
        return code, out.out, out.err

    code, shop, _ = cli("create", "--role", "merchant", "--label", "front desk")
    code, brief, err = cli("create", "--role", "operator", "--expires-in", "1")
    assert code == 0 and err.startswith("expires ")
    code, dave, _ = cli("create", "--role", "customer", "--account", "dave", "--expires-in", "30d")
    storage, domain = open_domain(storage_url, tmp_path / "var")
    try:
        ids = [domain.auth.authenticate(f"Bearer {t.strip()}").token_id for t in (shop, dave)]
        time.sleep(1.1)  # brief expires
        code, listed, _ = cli("list")
        assert code == 0
        rows = [line.split("\t") for line in listed.splitlines()]
        assert [r[1:4] for r in rows] == [
            ["merchant", "-", '"front desk"'],
            ["operator", "-", '""'],
            ["customer", "dave", '""'],
        ]
        assert [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows)
        assert rows[0][5] == "active, never expires"
        assert rows[1][5].startswith("expired ") and rows[2][5].startswith("active, expires ")
        assert all(t.strip() not in listed for t in (shop, brief, dave))
        assert cli("revoke", str(ids[0])) == (0, f"revoked token {ids[0]}\n", "")
        with pytest.raises(NotAuthenticated):
            domain.auth.authenticate(f"Bearer {shop.strip()}")
        code, _, err = cli("revoke", str(ids[0]))
        assert code == 1 and "no such token, or revoked already" in err
        assert cli("revoke", "999999")[0] == 1
        code, listed, _ = cli("list")
        assert listed.splitlines()[0].split("\t")[5].startswith("revoked ")
        with storage.read() as tx:
            revokes = [(e.actor, e.subject) for e in tx.audit_entries() if e.action == "token.revoke"]
        assert revokes == [("cli", f"token:{ids[0]}")]
        assert domain.auth.authenticate(f"Bearer {dave.strip()}").account == "dave"
    finally:
        storage.close()


# -- the real process ---------------------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], int]]]:
    procs: list[subprocess.Popen[str]] = []

    def run(*args: str) -> tuple[subprocess.Popen[str], int]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "cardmint.cli.serve", "--listen", "127.0.0.1:0", *args],
            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(proc)
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if m := re.search(r"serving on 127\.0\.0\.1:(\d+)", line):
                return proc, int(m.group(1))
        proc.kill()
        pytest.fail(f"server did not start: {proc.stderr.read()}")

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


def test_serve_first_start_creates_var(
    spawn: Callable[..., tuple[subprocess.Popen[str], int]], tmp_path: Path
) -> None:
    proc, port = spawn()
    var = tmp_path / "var"
    assert (var / "cardmint.db").is_file()
    keys = [p for p in (var / "keys").iterdir() if p.is_file()]
    assert keys and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_sigterm_drains_in_flight_calls(
    spawn: Callable[..., tuple[subprocess.Popen[str], int]], tmp_path: Path
) -> None:
    proc, port = spawn("--grace", "20")
    storage, domain = open_domain(None, tmp_path / "var")  # the server's database and keys
    try:
        token = domain.auth.create_token("merchant").token
    finally:
        storage.close()
    with Client(f"127.0.0.1:{port}", token) as client:
        code = client.generate(1)[0]
        # A bulk check stream that stays open across the signal: in flight, not finished.
        release = threading.Event()

        def chunks() -> Iterator[keys_pb2.CheckRequest]:
            for i in range(2):
                if i == 1:
                    assert release.wait(30)
                yield keys_pb2.CheckRequest(
                    codes=common_pb2.PackedStrings(data=code.encode(), width=len(code))
                )

        call = client.keys.Check(chunks(), metadata=client._metadata, timeout=60)
        answers = iter(call)
        assert next(answers).status == bytes([keys_pb2.CODE_STATUS_UNKNOWN])
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # still draining: our call is not finished
        # New calls are refused while draining.
        with pytest.raises(grpc.RpcError):
            next(
                iter(
                    client.keys.Generate(
                        keys_pb2.GenerateRequest(count=1), metadata=client._metadata, timeout=5
                    )
                )
            )
        release.set()
        assert next(answers).status == bytes([keys_pb2.CODE_STATUS_UNKNOWN])
        assert list(answers) == []
        assert call.code() == grpc.StatusCode.OK
    assert proc.wait(timeout=30) == 0
