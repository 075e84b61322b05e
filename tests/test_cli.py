"""The `cardmint` command as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cardmint.kernel import Kernel

GROUPED = re.compile(rb"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$")


def cardmint(
    *args: str, stdin: bytes = b"", backend: str | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    e = {**os.environ, **env}
    if backend:
        e["CARDMINT_KERNEL"] = backend
    return subprocess.run(
        [sys.executable, "-m", "cardmint.cli", *args],
        input=stdin,
        capture_output=True,
        env=e,
        timeout=120,
        check=False,
    )


def test_version() -> None:
    from importlib.metadata import version

    from cardmint.kernel import available_backends

    p = cardmint("--version")
    assert p.returncode == 0, p.stderr
    backends = ", ".join(available_backends())
    assert p.stdout.decode() == f"cardmint {version('cardmint')} (kernel backends: {backends})\n"
    assert version("cardmint").startswith("0.")


# What a command that talks to a server must not load: each costs its start time (numpy and
# the native kernel ~0.1-0.3 s, the domain and storage ~0.3 s more) on every invocation.
HEAVY = (
    "numpy",
    "cardmint.kernel",
    "cardmint.server.domain",
    "cardmint.server.storage",
    "cardmint.server.tls",
)


@pytest.mark.parametrize(
    "argv",
    [
        ["card", "history", "--serial", "100000001"],
        ["events", "--follow"],
        ["compliance", "reports"],
        ["order", "list"],
        ["lot", "list"],
        ["org", "members", "--org", "acme"],
    ],
)
def test_a_remote_command_starts_without_the_kernel_or_the_server(argv: list[str]) -> None:
    """The parser (every command's options, the server's settings among them), the client
    and a connection: nothing of ``HEAVY`` is imported."""
    code = (
        "import sys\n"
        "from cardmint.cli import _parser\n"
        "from cardmint.cli._remote import connect\n"
        f"args = _parser().parse_args({[*argv, '--token', 't', '--server', '127.0.0.1:9']!r})\n"
        "connect(args).close()\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules for h in heavy if m == h or m.startswith(h + '.')))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "[]\n"


def test_generate_default_format(kernel: Kernel) -> None:
    p = cardmint("keys", "generate", "-n", "2000", backend=kernel.name)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2000 == len(set(lines))
    assert all(GROUPED.match(line) for line in lines)
    assert p.stderr == b""  # progress only on a terminal
    canon = [line.replace(b"-", b"") for line in lines]
    assert kernel.validate(canon).all()


def test_generate_options_and_secret_file(tmp_path: Path) -> None:
    out = tmp_path / "lot.txt"
    p = cardmint(
        "keys", "generate", "-n", "300", "--length", "20", "--group", "5", "--prefix", "GC", "--out", str(out)
    )
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.partial"))
    lines = out.read_bytes().splitlines()
    assert len(lines) == 300 and all(re.fullmatch(rb"GC[0-9A-Z]{3}(-[0-9A-Z]{5}){3}", x) for x in lines)


def test_generate_streams_in_chunks_without_repeating(tmp_path: Path) -> None:
    """A run of 200,000 five-symbol codes (2^20 payloads) in 7,000-code chunks."""
    p = cardmint("keys", "generate", "-n", "200000", "--length", "5", "--group", "0", "--chunk", "7000")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == len(set(lines)) == 200_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "600000", "--length", "5"], b"do not fit"),
        (["-n", "5", "--prefix", "GIFT"], b"prefix"),
        (["-n", "5", "--length", "40"], b"length"),
        (["-n", "-3"], b"-n must be"),
        (["-n", "5", "--out", "/nonexistent/dir/x"], b"No such file"),
    ],
)
def test_generate_refuses_with_one_line(args: list[str], message: bytes) -> None:
    p = cardmint("keys", "generate", *args)
    assert p.returncode == 2
    assert message in p.stderr and b"Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def _issued(tmp_path: Path, kernel: Kernel, n: int = 50) -> tuple[Path, list[str]]:
    codes = [c.decode() for c in kernel.generate(n, seed=bytes(32)).codes.tolist()]
    path = tmp_path / "issued.txt"
    path.write_text("\n".join("-".join(c[i : i + 4] for i in range(0, 16, 4)) for c in codes) + "\n\n")
    return path, codes


def test_check_every_status(tmp_path: Path, kernel: Kernel) -> None:
    issued, codes = _issued(tmp_path, kernel)
    a, b, c = codes[0], codes[1], codes[2]
    stranger = kernel.generate(1, seed=bytes([5] * 32)).codes[0].decode()
    typo = b[:5] + ("8" if b[5] != "8" else "B") + b[6:]
    fw = "".join(chr(ord(ch) + 0xFEE0) for ch in a)
    lines = [
        a.lower(),  # ok
        " " + "\u200b".join(a) + " \r",  # ok, with invisible junk
        fw,  # ok, full-width
        stranger,  # unknown
        typo,  # corrected
        c[:3] + "U" + c[4:],  # corrected (erasure)
        stranger[:-1] + ("0" if stranger[-1] != "0" else "1"),  # bad_check, nothing issued nearby
        "hello",
        "",
    ]
    data = "\n".join(lines).encode() + b"\n\xff\xfe\x00garbage\n"
    p = cardmint("keys", "check", "--issued", str(issued), stdin=data, backend=kernel.name)
    assert p.returncode == 1, p.stderr
    rows = [r.split(b"\t") for r in p.stdout.splitlines()]
    assert [r[0] for r in rows] == [
        b"ok",
        b"ok",
        b"ok",
        b"unknown",
        b"corrected",
        b"corrected",
        b"bad_check",
        b"malformed",
        b"malformed",
        b"malformed",
    ]
    assert rows[0][1] == a.encode() and rows[4][2] == b.encode() and rows[5][2] == c.encode()
    assert all(len(r) == 3 for r in rows)


def test_check_exit_zero_when_all_ok(tmp_path: Path) -> None:
    issued, codes = _issued(tmp_path, Kernel("python"))
    p = cardmint("keys", "check", "--issued", str(issued), str(issued))  # blank last line is EMPTY
    assert p.returncode == 1
    good = tmp_path / "good.txt"
    good.write_text("\n".join(codes) + "\n")
    p = cardmint("keys", "check", "--issued", str(issued), str(good))
    assert p.returncode == 0, p.stdout
    p = cardmint("keys", "check", str(good))  # without --issued: every valid code is ok
    assert p.returncode == 0 and p.stdout.count(b"ok\t") == 50


def test_check_binary_and_huge_lines(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(b for b in range(256) if b != 0x0A) * 300 + b"\n" + b"A" * 200_000 + b"\nX\n")
    p = cardmint("keys", "check", str(blob))
    assert p.returncode == 1, p.stderr
    assert [r.split(b"\t")[0] for r in p.stdout.splitlines()] == [b"malformed"] * 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing-file.txt"], b"No such file"),
        (["--issued", "missing-issued.txt"], b"No such file"),
        (["--length", "2"], b"--length"),
    ],
)
def test_check_refuses_with_one_line(args: list[str], message: bytes) -> None:
    p = cardmint("keys", "check", *args, stdin=b"")
    assert p.returncode == 2 and message in p.stderr and b"Traceback" not in p.stderr


def test_check_names_a_bad_issued_line(tmp_path: Path) -> None:
    bad = tmp_path / "issued.txt"
    code = Kernel("python").generate(1, seed=bytes(32)).codes[0].decode()
    bad.write_text(f"{code}\nnot-a-code\n")
    p = cardmint("keys", "check", "--issued", str(bad), stdin=code.encode())
    assert p.returncode == 2 and b"line 2" in p.stderr


def test_bench_tiny_reports_every_operation_for_every_backend(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = cardmint("bench", "--quick", "--json", str(out), CARDMINT_BENCH_SIZE="tiny")
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    rows = report["rows"]
    ops = {r["operation"] for r in rows}
    backends = {r["backend"] for r in rows}
    assert {"mint+check", "check ascii", "index lookup", "correct (per call)", "check_one (scalar)"} <= ops
    assert "plain python" in backends and "python" in backends
    for op in ops:
        have = {r["backend"] for r in rows if r["operation"] == op}
        # The end-to-end command runs once per backend; the rest also has rust on 1 thread.
        assert have == (backends - {"rust 1 thread"} if op.endswith("(e2e)") else backends), op
    assert all(r["rate"] > 0 and r["vs_baseline"] > 0 for r in rows)
    assert b"x plain" in p.stdout
