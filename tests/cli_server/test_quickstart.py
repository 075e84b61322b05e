"""README.md's quick start, run as written: ``cardmint serve``, then the second shell block.

The commands are parsed out of the ``sh`` blocks between the README's ``quickstart``
markers, so the quick start cannot rot: the only changes are ``--listen 127.0.0.1:0`` on
serve (an ephemeral port) and ``CARDMINT_SERVER`` pointing the other commands at it.
"""

from __future__ import annotations

import re
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

from tests.cli_server.conftest import cli_env, wait_for_port

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- quickstart:start -->", "<!-- quickstart:end -->"


def shell_blocks() -> list[str]:
    text = README.read_text()
    assert text.count(START) == 1 and text.count(END) == 1, "the README marks one quick start"
    inner = text.split(START, 1)[1].split(END, 1)[0]
    return re.findall(r"^```sh\n(.*?)^```", inner, flags=re.S | re.M)


def test_the_quick_start_comes_right_after_the_intro() -> None:
    """The README opens with the two commands, then the intro, then the quick start."""
    lines = README.read_text().splitlines()
    assert lines[0].split()[:2] == ["make", "run"] and lines[1].split()[:2] == ["make", "test"]
    headings = [ln for ln in lines if ln.startswith("#")]
    assert headings[:2] == ["# cardmint", "## Quick start: five minutes to a redeemed card"]


def test_quickstart_as_written(bindir: Path, tmp_path: Path) -> None:
    blocks = shell_blocks()
    assert len(blocks) == 2, "quickstart: one block to serve, one to use it"
    serve_cmd = blocks[0].strip()
    assert serve_cmd == "cardmint serve"
    script = blocks[1]
    work = tmp_path / "work"
    work.mkdir()
    env = cli_env(bindir)
    t0 = time.monotonic()
    server = subprocess.Popen(
        [*shlex.split(serve_cmd), "--listen", "127.0.0.1:0"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = wait_for_port(server)
        env["CARDMINT_SERVER"] = f"127.0.0.1:{port}"
        # The doc's redeem and balance lines, once more: a repeated request id moves nothing.
        again = [ln for ln in script.splitlines() if ln.startswith(("cardmint redeem", "cardmint balance"))][
            -2:
        ]
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script + "\n".join(again) + "\n"],
            cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out = done.stdout.splitlines()
        assert out[0].startswith("created product GC-100\t")
        assert re.match(r"lot \d+: 100 cards of 100\.00 CNY \(GC-100\)", out[1])
        assert out[2].startswith("bound: card ")
        assert out[3] == "100.00 CNY"
        assert out[4].startswith("redeemed 25.00 CNY on card ")
        assert "balance 75.00 CNY" in out[4]
        assert "replayed" not in out[4]
        assert out[5] == "75.00 CNY"
        assert "replayed" in out[6]
        assert out[7] == "75.00 CNY"
        assert len(out) == 8
        assert "Traceback" not in done.stderr
        lot = work / "lot.csv"
        assert stat.S_IMODE(lot.stat().st_mode) == 0o600
        assert len(lot.read_text().splitlines()) == 101
        assert not list(work.glob(".*.part"))
        # The database under ./var (sealed codes, digests, hashed tokens), its WAL and shared
        # memory are the owner's only, as its keys are.
        db = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (work / "var").glob("cardmint.db*")}
        assert {"cardmint.db", "cardmint.db-wal", "cardmint.db-shm"} <= db.keys()
        assert set(db.values()) == {0o600}, db
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            rc = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
            raise
        if server.stderr is not None:
            server.stderr.close()
    assert rc == 0
    print(f"quickstart: {time.monotonic() - t0:.1f} s")
