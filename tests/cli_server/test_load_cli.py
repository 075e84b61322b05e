"""`cardmint load` as an operator runs it, against a live server (SQLite and PostgreSQL):
one phase, a search, its JSON; bad options are one-line usage errors. The figures are not
judged here (tests/reliability/test_load.py does the overload); only what the run did."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cardmint.cli.load import Mix, percentile
from hypothesis import given
from hypothesis import strategies as st

Cli = Callable[..., subprocess.CompletedProcess[str]]


def test_one_phase_prints_the_table_and_writes_json(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    r = cli("load", "--rate", "20", "--duration", "1", "--seed", "7", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "p99 ms" in r.stdout and "seed 7" in r.stdout
    data = json.loads(out.read_text())
    assert data["seed"] == 7 and data["best_rate"] is None
    [phase] = data["phases"]
    assert phase["offered"] == 20 and phase["answered"] == 20
    assert sum(phase["by_status"].values()) == 20
    assert sum(sum(by.values()) for by in phase["by_op"].values()) == 20
    assert phase["max_ms"] >= phase["p99_ms"] >= phase["p95_ms"] >= phase["p50_ms"] > 0


def test_search_is_bounded_by_its_steps(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    r = cli(
        "load", "--search", "--start-rate", "10", "--step-seconds", "0.5", "--max-steps", "2",
        "--mix", "balance=1,redeem=1", "--json", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "highest rate with p99 <= 50 ms" in r.stdout
    data = json.loads(out.read_text())
    assert 1 <= len(data["phases"]) <= 2
    assert data["mix"] == {"balance": 1, "redeem": 1, "bind": 0, "order": 0}
    assert {op for p in data["phases"] for op in p["by_op"]} <= {"balance", "redeem"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mix", "bogus=1"), "--mix: expected NAME=WEIGHT"),
        (("--mix", "balance=0"), "every weight is 0"),
        (("--rate", "0"), "--rate must be positive"),
        (("--deadline", "-1"), "--deadline must be positive"),
    ],
)
def test_bad_options_are_usage_errors(cli: Cli, args: tuple[str, ...], message: str) -> None:
    r = cli("load", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_mix_parse() -> None:
    assert Mix.parse("balance=4,redeem=3,bind=2,order=1") == Mix()
    assert Mix.parse("order=5") == Mix(0, 0, 0, 5)
    for bad in ("balance", "redeem=-1", "order=x", "", "balance=0,order=0"):
        with pytest.raises(ValueError, match="--mix"):
            Mix.parse(bad)


@given(st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=5), st.integers(0, 2**32))
def test_schedule_draws_only_weighted_operations(balance: int, order: int, seed: int) -> None:
    if balance + order == 0:
        return
    ops = Mix(balance, 0, 0, order).schedule(200, random.Random(seed))
    assert len(ops) == 200
    assert set(ops) <= {op for op, w in (("balance", balance), ("order", order)) if w}


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=300), st.floats(0.01, 1.0))
def test_percentile_is_nearest_rank(values: list[float], q: float) -> None:
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert p in ordered
    # Nearest rank: at least a fraction q of the values are <= p, and fewer are < p.
    assert sum(v <= p for v in ordered) >= q * len(ordered) - 1e-9
    assert sum(v < p for v in ordered) < q * len(ordered) + 1e-9
