"""`cardmint bench --ci`: the quick benchmark table CI prints, kernel and server in one run.

Two tables, both measured in this one run on this machine:

* every kernel operation on every backend against the plain-Python baseline
  (`cardmint bench --quick` sizes), 'x plain' = rate / plain-Python rate;
* the server's unary calls (GetBalance, Redeem, BindCard; 64 clients over 4 channels, on
  SQLite in a temporary directory) against a bare grpcio echo server with the same clients,
  'x echo' = calls/s / echo calls/s.

``--json FILE`` writes the rows and, under ``ratios``, one number per row (``kernel <op>
[<backend>]`` and ``server <op> [<backend>]``): what ``benches/compare.py`` compares with
the baseline kept in the repository; ``noisy`` lists the ratios it flags but never fails on. Ratios, not absolute times: the CI machine is shared
and noisy, but both sides of a ratio are measured together. ``CARDMINT_BENCH_SIZE=tiny``
runs toy sizes (the tests use it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from . import bench
from .bench import Row

# The server rows' size: enough calls that a row lasts a few seconds on 2 cores.
CI_SERVER = {"calls": 2_000, "threads": 64, "channels": 4, "limit_s": 60.0}
TINY_SERVER = {"calls": 64, "threads": 8, "channels": 2, "limit_s": 30.0}


def ratio_key(kind: str, row: Row) -> str:
    return f"{kind} {row.operation} [{row.backend}]"


def noisy(kernel: list[Row]) -> list[str]:
    """Ratios compared and flagged but never failing CI: the kernel rows on every core
    ("rust": their speed-up needs idle cores a shared machine does not promise) and the
    Python reference's (a single timing of a small sample)."""
    return [ratio_key("kernel", r) for r in kernel if r.backend in ("rust", "python")]


def ratios(kernel: list[Row], server: list[Row]) -> dict[str, float]:
    """One ratio per measured row; the baselines themselves (always 1) are left out."""
    out: dict[str, float] = {}
    for kind, rows in (("kernel", kernel), ("server", server)):
        for r in rows:
            if r.vs_baseline is not None and r.backend not in ("plain python", "bare grpcio"):
                out[ratio_key(kind, r)] = round(r.vs_baseline, 4)
    return out


def measure_server(tiny: bool) -> list[Row]:
    """The echo row and the unary rows on SQLite (``vs_baseline`` = calls/s over echo's)."""
    from .bench_server import (
        ServerSizes,
        cardmint_server,
        echo_row,
        echo_server,
        load_row,
        make_lot,
        measure_echo,
        measure_unary,
    )

    size = TINY_SERVER if tiny else CI_SERVER
    calls, threads, chans, limit_s = (
        int(size["calls"]),
        int(size["threads"]),
        int(size["channels"]),
        size["limit_s"],
    )
    sizes = ServerSizes(calls, threads, chans, threads + calls, 0, 0, 0, limit_s, 1)
    with echo_server() as addr:
        echo = measure_echo(addr, sizes)
    rows: list[Row] = [echo_row(f"echo ({threads} clients)", echo)]
    with tempfile.TemporaryDirectory(prefix="cardmint-bench-ci-") as tmp:
        url = f"sqlite://{Path(tmp) / 'cardmint.db'}"
        with cardmint_server(url, Path(tmp) / "var") as (addr, token):
            tag = f"ci{os.getpid()}-{time.time_ns()}"
            lot_rows, _ = make_lot(addr, token, f"BENCH-{tag}"[:32], threads + calls)
            for op, load in measure_unary(addr, token, lot_rows, sizes, tag).items():
                r = load_row(f"{op} ({threads} clients)", "sqlite", load, f"{load.errors} refused")
                r.vs_baseline = load.rate / echo.rate if echo.rate else None
                rows.append(r)
    return rows


def server_table(rows: list[Row]) -> str:
    head = (
        f"{'call':<26} {'server':<12} {'calls':>7} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'x echo':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        p50 = getattr(r, "p50_ms", None) or 0.0
        p99 = getattr(r, "p99_ms", None) or 0.0
        ratio = f"{r.vs_baseline:7.2f}x" if r.vs_baseline is not None else ""
        lines.append(
            f"{r.operation:<26} {r.backend:<12} {r.n:>7} {r.rate:>10.1f} {p50:>8.2f} {p99:>8.2f} {ratio:>8}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    tiny = os.environ.get("CARDMINT_BENCH_SIZE") == "tiny"
    started = time.time()
    kernel_rows = bench.measure(bench.TINY if tiny else bench.QUICK)
    server_rows = measure_server(tiny)
    print(
        f"cardmint bench --ci ({'tiny' if tiny else 'quick'}): {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; kernel vs plain Python, server vs a bare echo server"
    )
    print(bench.table(kernel_rows))
    print()
    print(server_table(server_rows))
    print(f"({time.time() - started:.0f} s; every ratio from rows measured in this run)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "kind": "cardmint-bench-ci",
                    "size": "tiny" if tiny else "quick",
                    "machine": {
                        "cores": os.cpu_count(),
                        "python": platform.python_version(),
                        "platform": platform.platform(),
                    },
                    "ratios": ratios(kernel_rows, server_rows),
                    "noisy": noisy(kernel_rows),
                    "kernel": [asdict(r) for r in kernel_rows],
                    "server": [asdict(r) for r in server_rows],
                },
                f,
                indent=1,
                sort_keys=False,
            )
            f.write("\n")
    sys.stdout.flush()
    return 0
