"""`cardmint bench --server` as a user runs it, at tiny size: every row there, every rate
positive, the redeem race exact. No timing asserts: the figures belong to the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    """`--apart`: echo servers and cardmint servers of 1 and 2 processes (each process
    spawned, calls spread round robin), the clients here, and the durable write floor of
    2 (one committed row per call). Every row answered every call;
    the closed-loop rows name the server processes' CPU per call, read from them; the
    largest fleet also carries the paced rows, the highest paced rates within the p99s
    and the card shop's rows, its race exact; 'x echo' is against the fastest echo."""
    from cardmint.cli.bench_server import ORDERS_TINY, TINY, OrderRace, measure_apart

    races: list[tuple[str, OrderRace]] = []
    rows = measure_apart(TINY, fleets=(1, 2), order_sizes=ORDERS_TINY, order_races=races)
    one, two = "1 server process apart", "2 server processes apart"
    assert [(r.operation, r.backend) for r in rows] == [
        (f"echo (8 clients, {one})", "bare grpcio"),
        (f"echo (8 clients, {two})", "bare grpcio"),
        (f"durable write floor (8 clients, {two})", "sqlite"),
        (f"durable write floor (8 clients, p99 <= 25 ms, {two})", "sqlite"),
        (f"GetBalance (8 clients, {one})", "sqlite"),
        (f"Redeem (8 clients, {one})", "sqlite"),
        (f"BindCard (8 clients, {one})", "sqlite"),
        (f"GetBalance (8 clients, {two})", "sqlite"),
        (f"Redeem (8 clients, {two})", "sqlite"),
        (f"BindCard (8 clients, {two})", "sqlite"),
        (f"Redeem (8 clients, paced, {two})", "sqlite"),
        (f"BindCard (8 clients, paced, {two})", "sqlite"),
        (f"Redeem (8 clients, p99 <= 25 ms, {two})", "sqlite"),
        (f"BindCard (8 clients, p99 <= 25 ms, {two})", "sqlite"),
        (f"order round trip (8 clients, {two})", "sqlite"),
        (f"order round trip (8 clients, paced, {two})", "sqlite"),
        (f"order round trip (8 clients, p99 <= 40 ms, {two})", "sqlite"),
        (f"order race (20 buyers, {two})", "sqlite"),
    ]
    echoes = [r for r in rows if r.backend == "bare grpcio"]
    assert max(r.vs_baseline or 0 for r in echoes) == 1.0
    fastest = max(r.rate for r in echoes)
    for r in rows:
        assert r.vs_baseline is not None or "race" in r.operation, r
        knee = "p99 <=" in r.operation
        if knee:  # the highest paced rate within the p99: its phases are named, it may be 0
            assert "highest paced rate within p99" in r.note and "tried " in r.note, r
            assert r.rate >= 0, r
            continue
        assert r.rate > 0, r
        if r.operation.startswith(("echo", "durable", "GetBalance", "Redeem", "BindCard")):
            assert r.n == TINY.calls, r
            assert "0 refused" in r.note or r.backend == "bare grpcio", r
            assert r.vs_baseline == pytest.approx(r.rate / fastest), r
        if sys.platform == "linux" and "paced" not in r.operation and "order" not in r.operation:
            cpu = float(r.note.split("server processes ")[1].split(" us CPU per call")[0])
            assert cpu > 0, r
    assert "0 failed" in rows[-4].note and "0 failed" in rows[-3].note
    assert [label for label, _ in races] == [f"sqlite, {two}"] and races[0][1].exact
    assert rows[-1].met is True


def test_the_durable_write_floor_commits_a_row_per_call(tmp_path: Path) -> None:
    """The floor's one method commits through the storage before it answers: after each
    call the probe row on disk holds a newer time (read by another connection)."""
    import sqlite3

    import grpc
    from cardmint.cli.bench_server import FLOOR_METHOD, floor_apart

    def probed() -> list[int]:
        with sqlite3.connect(tmp_path / "var" / "cardmint.db") as db:
            return [int(r[0]) for r in db.execute("SELECT probed_at FROM storage_probe")]

    with floor_apart(tmp_path / "var", 1) as srv, grpc.insecure_channel(srv.addr) as ch:
        write = ch.unary_unary(FLOOR_METHOD, None, None)
        assert probed() == []
        seen = []
        for _ in range(3):
            assert write(b"abc", timeout=10) == b"abc"
            seen += probed()
    assert len(seen) == 3 and seen == sorted(set(seen))


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(0, 3000),
    ceiling=st.floats(50, 2000),
    steps=st.integers(1, 8),
    flaky=st.sets(st.integers(0, 12), max_size=4),
)
def test_the_knee_search_finds_the_capacity_within_its_resolution(
    capacity: float, ceiling: float, steps: int, flaky: set[int]
) -> None:
    """``highest_paced`` against a fake server: within the p99 up to ``capacity`` calls/s,
    over it above; the phases numbered in ``flaky`` fail once whatever the rate (another
    process's pause), which a retry must absorb. It reports the ceiling when that passes,
    else a rate that passed, within ceiling / 2**steps of the capacity once the flukes are
    used up, and never a rate that failed twice."""
    from cardmint.cli.bench_server import Load, highest_paced

    def phase(rate: float, k: int) -> Load:
        over = rate > capacity or k in flaky
        return Load(100, 0, 1.0, 5.0, 100.0 if over else 10.0)

    knee = highest_paced(phase, ceiling, 25.0, steps)
    assert len(knee.tried) <= 1 + steps + 2  # the ceiling, the bisections, two retries
    if capacity >= ceiling and 0 not in flaky:
        assert knee.rate == ceiling
    assert knee.rate <= min(capacity, ceiling)  # only a rate that passed
    passed = [r for r, load in knee.tried if load.p99_ms <= 25.0]
    assert knee.rate == (max(passed) if passed else 0.0)
    if not flaky:
        assert knee.rate >= min(capacity, ceiling) - ceiling / 2**steps
