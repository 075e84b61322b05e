"""`cardmint bench --server` as a user runs it, at tiny size: every row there, every rate
positive, the redeem race exact. No timing asserts: the figures belong to the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROWS = {
    ("echo (8 clients)", "bare grpcio"),
    ("lot create+export", "sqlite"),
    ("GetBalance (8 clients)", "sqlite"),
    ("Redeem (8 clients)", "sqlite"),
    ("BindCard (8 clients)", "sqlite"),
    ("Redeem (8 clients, paced)", "sqlite"),
    ("BindCard (8 clients, paced)", "sqlite"),
    ("order round trip (8 clients)", "sqlite"),
    ("order round trip (8 clients, paced)", "sqlite"),
    ("order race (20 buyers)", "sqlite"),
    ("bulk Check (codes)", "sqlite"),
    ("redeem race (8 clients)", "sqlite"),
}


def test_bench_server_tiny(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, "-m", "cardmint.cli", "bench", "--server", "--json", str(out)],
        env={**os.environ, "CARDMINT_BENCH_SIZE": "tiny"},
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    text = p.stdout.decode()
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {(r["operation"], r["backend"]) for r in rows} == ROWS
    for r in rows:
        assert r["n"] > 0 and r["seconds"] > 0 and r["rate"] > 0, r
        assert r["operation"] in text
    unary = [r for r in rows if "clients" in r["operation"] and not r["operation"].startswith("redeem race")]
    assert all(r["vs_baseline"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in unary)
    (race,) = data["races"]
    assert race["exact"] and race["succeeded"] == race["face"] and race["balance_after"] == 0
    assert "exactly its balance spent" in text
    # Paced rows: every call answered, offered on a schedule; the note says what was offered.
    for r in rows:
        if r["operation"].endswith("paced)"):
            assert "offered" in r["note"] and r["p99_ms"] >= r["p50_ms"] > 0, r
    (order_race,) = data["order_races"]
    assert order_race["exact"] and order_race["delivered"] == order_race["distinct"] == order_race["pool"]
    assert "pool sold once, rest sold out" in text


def test_lot_rows_read_like_the_list_of_pairs_they_replace() -> None:
    """The bench keeps a lot's rows as two byte-string arrays (no per-row Python objects
    for the garbage collector to walk while it measures); they read as (serial, code)."""
    import numpy as np
    import pytest
    from cardmint.cli.bench_server import LotRows

    pairs = [(f"{i:012d}", f"CODE{i:04d}") for i in range(50)]
    rows = LotRows(np.array([s.encode() for s, _ in pairs]), np.array([c.encode() for _, c in pairs]))
    assert len(rows) == 50 and list(rows) == pairs
    assert rows[7] == pairs[7] and rows[-1] == pairs[-1]
    assert list(rows[10:20]) == pairs[10:20] and list(rows[45:]) == pairs[45:]
    assert rows[10:][0] == pairs[10]
    with pytest.raises(IndexError):
        rows[50]
    with pytest.raises(ValueError, match="serials but"):
        LotRows(np.array([b"1"]), np.array([b"a", b"b"]))


def test_servers_apart_tiny() -> None:
    """`--apart`: echo and a cardmint server each in a spawned process, the clients here;
    each row answered every call and names the server process's CPU per call, read from it."""
    from cardmint.cli.bench_server import TINY, measure_apart

    rows = measure_apart(TINY)
    assert [(r.operation, r.backend) for r in rows] == [
        ("echo (8 clients, server apart)", "bare grpcio"),
        ("GetBalance (8 clients, server apart)", "sqlite"),
        ("Redeem (8 clients, server apart)", "sqlite"),
        ("BindCard (8 clients, server apart)", "sqlite"),
    ]
    for r in rows:
        assert r.n == TINY.calls and r.rate > 0 and r.vs_baseline is not None and r.vs_baseline > 0, r
        assert "0 refused" in r.note or r.backend == "bare grpcio", r
        if sys.platform == "linux":
            cpu = float(r.note.split("server process ")[1].split(" us CPU per call")[0])
            assert cpu > 0, r
