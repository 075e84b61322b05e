"""The real ``cardmint serve`` process configured by a file, the environment and flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.cli_server.conftest import CLI_TIMEOUT, cli_env, wait_for_port


def run(bindir: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["cardmint", *args], cwd=cwd, env=cli_env(bindir, **env),
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip


def test_serve_with_a_config_file_and_env_overrides(bindir: Path, tmp_path: Path, storage_url: str) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    conf = etc / "cardmint.toml"
    conf.write_text(
        f'db = "{storage_url}"\n'
        'listen = "127.0.0.1:1"\n'  # the environment moves it to a free port
        'var = "../state"\n'  # relative to this file
        'metrics = "127.0.0.1:0"\n'
        'log_format = "text"\n'  # the environment says json, the flag text again... see below
        "workers = 2\n"
        "pool_max_size = 4\n"
        'profile = "cn-prepaid"\n'
    )
    env = {"CARDMINT_CONFIG": str(conf), "CARDMINT_LISTEN": "127.0.0.1:0", "CARDMINT_LOG_FORMAT": "text"}
    shown = run(bindir, work, "config", "show", "--log-format", "json", **env)
    assert shown.returncode == 0, shown.stderr
    lines = {}
    for ln in shown.stdout.splitlines():
        key, sep, _ = ln.removeprefix("# ").partition(" = ")
        if sep:
            lines[key.strip()] = ln
    assert "flag --log-format" in lines["log_format"] and '"json"' in lines["log_format"]
    assert "env CARDMINT_LISTEN" in lines["listen"]
    assert f"# {conf}" in lines["profile"] and "cn-prepaid" in lines["profile"]
    assert "# default" in lines["grace"]
    assert "digest keys: none yet" in shown.stdout
    assert not (tmp_path / "state").exists()  # show creates nothing

    server = subprocess.Popen(
        ["cardmint", "serve", "--log-format", "json", "--health-listen", "127.0.0.1:0"],
        cwd=work, env=cli_env(bindir, **env),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = wait_for_port(server)
        assert port != 1
        # keys were created under the file's relative var directory, mode 0600
        keys = tmp_path / "state" / "keys"
        assert sorted(p.name for p in keys.iterdir()) == ["digest.key", "seal-1.key"]
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys.iterdir())
        # the token is minted against the same database and keys, through the same file
        token = run(bindir, work, "token", "create", "--role", "admin", **env)
        assert token.returncode == 0, token.stderr
        call = {"CARDMINT_TOKEN": token.stdout.strip(), "CARDMINT_SERVER": f"127.0.0.1:{port}"}
        made = run(bindir, work, "product", "create", "--sku", "CFG-1", "--name", "c",
                   "--currency", "CNY", "--denominations", "100", "--validity-days", "1100", **call)  # fmt: skip
        assert made.returncode == 0, made.stderr
        listed = run(bindir, work, "product", "list", **call)
        assert "CFG-1" in listed.stdout
        # metrics (from the file) are served; the bound port is logged
        assert server.stderr is not None
        line = server.stderr.readline()
        record = json.loads(line)  # the flag made the log JSON although env and file said text
        assert record["msg"].startswith("metrics on http://127.0.0.1:")
        url = record["msg"].removeprefix("metrics on ")
        with urllib.request.urlopen(url, timeout=30) as r:
            assert b"cardmint_rpc_calls_total" in r.read()
        # health checks (from the flag) also on a port of their own, logged
        record = json.loads(server.stderr.readline())
        assert record["msg"].startswith("health checks also on 127.0.0.1:")
        health_port = int(record["msg"].rsplit(":", 1)[1])
        assert health_port not in (port, 0)
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as ch:
            answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=60)
        if server.stderr is not None:
            server.stderr.close()
    assert rc == 0


def test_serve_refuses_bad_settings_and_open_keys_clearly(bindir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = 'eight'\n")
    out = run(bindir, tmp_path, "serve", "--config", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip() == f"cardmint: {bad}: workers: must be an integer, not str 'eight'"
    out = run(bindir, tmp_path, "serve", "--listen", "127.0.0.1:0", CARDMINT_WORKERS="0")
    assert out.returncode == 2
    assert out.stderr.strip() == "cardmint: env CARDMINT_WORKERS: workers: must be at least 1, not 0"
    # no flag takes key material
    out = run(bindir, tmp_path, "serve", "--digest-key", "00" * 32)
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr
    # a key file others may read is refused before anything listens
    keys = tmp_path / "var" / "keys"
    keys.mkdir(parents=True)
    (keys / "digest.key").write_bytes(os.urandom(32))
    (keys / "digest.key").chmod(0o644)
    out = run(bindir, tmp_path, "serve", "--listen", "127.0.0.1:0")
    assert out.returncode == 2, out.stderr
    assert "digest.key has mode 0o644, wider than 0600" in out.stderr
    assert "Traceback" not in out.stderr
    out = run(bindir, tmp_path, "config", "show")
    assert out.returncode == 2 and "wider than 0600" in out.stderr


def test_config_show_masks_secrets(bindir: Path, tmp_path: Path) -> None:
    digest, seal = os.urandom(32).hex(), os.urandom(32).hex()
    out = run(
        bindir, tmp_path, "config", "show", "--workers", "3",
        CARDMINT_DB="postgresql://app:s3cret-pw@127.0.0.1:5432/cm",
        CARDMINT_DIGEST_KEYS=f"1:{digest}", CARDMINT_SEAL_KEYS=seal,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "s3cret-pw" not in out.stdout and digest not in out.stdout and seal not in out.stdout
    assert (
        'db                        = "postgresql://app:***@127.0.0.1:5432/cm"  # env CARDMINT_DB'
        in out.stdout
    )
    assert "workers                   = 3" in out.stdout and "# flag --workers" in out.stdout
    assert (
        "# digest keys: 1 (current: see cardmint keys status) from env CARDMINT_DIGEST_KEYS (****)"
        in out.stdout
    )
    assert "# seal keys: 1 (current 1) from env CARDMINT_SEAL_KEYS (****)" in out.stdout
