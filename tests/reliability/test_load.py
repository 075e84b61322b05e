"""Load and overload (issue 5, item 12), on SQLite and PostgreSQL, with `cardmint load`'s
open-loop generator against ``cardmint serve`` in its own process.

1. search: the highest arrival rate of the mixed workload (balance reads, redeems, binds,
   orders) with p99 <= 50 ms and no errors (bounded steps);
2. hold: 60% of that rate: every call succeeds;
3. overload: 3x that rate: every call succeeds or is refused at once (RESOURCE_EXHAUSTED:
   the server's in-flight limit, or UNAVAILABLE); none is answered later than its deadline
   plus a margin after it was sent; nothing else (no DEADLINE_EXCEEDED: that would be a
   queue without bound), but for CANCELLED from grpc core's own shedding of calls the
   server never took, which its log must show it never saw (see the test);
4. recovery: 60% again: every call succeeds.

Then the books: on the redeem cards the money spent is exactly what was acknowledged (a
refused call changed nothing, nothing was spent twice; a replay of acknowledged redeems
answers "replayed" and spends nothing more), every acknowledged bind left its card bound
and every refused one left it unbound, no pool code was delivered twice and the pool adds
up. Only those correctness figures are asserted; rates and latencies are reported.

And SIGTERM under the same load (``test_sigterm_under_load``): the calls in flight finish,
later ones are refused UNAVAILABLE, the server exits 0, and after a restart the same books
show no partial effect.

The server runs as shipped (4 unary workers, ``--max-in-flight`` 128): at the few hundred
calls/s a 2-core machine answers, the queue it admits stays well under the calls' deadline,
and a pause of another process while the load holds at 60% is absorbed by the queue instead
of refused. ``--soak`` runs longer phases.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cardmint.cli.load import CARD_FACE, Mix, Phase, Workload, run_phase, search, workload
from cardmint.client import Client
from cardmint.server.app import open_domain

from .conftest import Report, Sizes

# Its phases measure a server: run with nothing beside it (`make pytest` runs it last, alone).
pytestmark = pytest.mark.alone

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
REFUSED = ("RESOURCE_EXHAUSTED", "UNAVAILABLE")
STOPPED = ("UNAVAILABLE", "CANCELLED")  # what a stopping server answers calls it will not run


@dataclass(frozen=True)
class LoadSizes:
    step_s: float
    max_steps: int
    search_budget_s: float
    phase_s: float
    start_rate: float
    deadline_s: float = 5.0  # every call's deadline
    margin_s: float = 1.0  # how late after it an answer may come (a busy client's callbacks)


def _sizes(sizes: Sizes) -> LoadSizes:
    if sizes.soak:
        return LoadSizes(step_s=5.0, max_steps=12, search_budget_s=150.0, phase_s=30.0, start_rate=100.0)
    return LoadSizes(step_s=2.0, max_steps=8, search_budget_s=40.0, phase_s=3.0, start_rate=100.0)


class ServerProcess:
    """``cardmint serve`` as a subprocess on 127.0.0.1 (stderr to ``log``); ``addr`` once up."""

    def __init__(self, url: str, var: Path, log: Path, grace: float = 0.0) -> None:
        cmd = [
            sys.executable, "-m", "cardmint.cli", "serve", "--db", url, "--var", str(var),
            "--listen", "127.0.0.1:0", "--grace", str(grace), "--log-format", "json", "--log-level", "info",
        ]  # fmt: skip
        self.log = log
        self._from = log.stat().st_size if log.exists() else 0
        with log.open("ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + START_TIMEOUT
        port = None
        while port is None and time.monotonic() < deadline and self.proc.poll() is None:
            m = re.search(r"serving on 127\.0\.0\.1:(\d+)", self.output())
            port = int(m.group(1)) if m else None
            if port is None:
                time.sleep(0.05)
        if port is None:
            self.stop()
            raise AssertionError(f"cardmint serve did not start:\n{self.output()[-3000:]}")
        self.addr = f"127.0.0.1:{port}"

    def output(self) -> str:
        with self.log.open("rb") as f:
            f.seek(self._from)
            return f.read().decode(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if still running after STOP_TIMEOUT; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=STOP_TIMEOUT)


@contextmanager
def serve(url: str, var: Path, log: Path, grace: float = 0.0) -> Iterator[ServerProcess]:
    server = ServerProcess(url, var, log, grace)
    try:
        yield server
    finally:
        server.stop()


def _books(w: Workload, admin: Client, refused: tuple[str, ...] = REFUSED) -> dict[str, int]:
    """The correctness figures of everything the run did (see the module docstring); a call
    that ended with a status in ``refused`` must have changed nothing."""
    redeems = [(k, s) for op, k, s in w.log if op == "redeem"]
    acked: Counter[str] = Counter()
    unknown: list[tuple[str, str]] = []
    for key, status in redeems:
        serial, request_id = key.split(" ")
        if status == "OK":
            acked[serial] += 1
        elif status not in refused:  # outcome not known to the caller: settle it by a replay
            unknown.append((serial, request_id))
    settled = 0
    for serial, request_id in unknown:  # the same request id: applied once, whatever happened
        admin.redeem(serial, 1, "CNY", request_id=request_id)
        acked[serial] += 1
        settled += 1
    replays = [(k.split(" ")) for k, s in redeems if s == "OK"][:50]
    replayed = sum(admin.redeem(serial, 1, "CNY", request_id=rid).replayed for serial, rid in replays)
    spent = sum(CARD_FACE - admin.get_card(serial).balance.minor_units for serial in w.redeem_serials)
    ledger = sum(
        t.amount.minor_units for serial in w.redeem_serials for t in admin.transactions(serial=serial)
    )
    binds = [(k, s) for op, k, s in w.log if op == "bind"]
    bound_ok = [k for k, s in binds if s == "OK"]
    bound_refused = [k for k, s in binds if s in refused]
    orders = [(k, s) for op, k, s in w.log if op == "order"]
    delivered = [serial for k, s in orders if s == "OK" for serial in k.split()]
    (stock,) = admin.stock(w.pool_sku).stock
    return {
        "redeems_acked": sum(acked.values()) - settled,
        "redeems_settled_by_replay": settled,
        "spent": spent,
        "spent_minus_acked": spent - sum(acked.values()),
        "ledger_plus_spent": ledger + spent,
        "replays": len(replays),
        "replays_answered_replayed": replayed,
        "binds_acked": len(bound_ok),
        "binds_acked_not_bound": sum(not admin.get_card(s).bound for s in bound_ok),
        "binds_refused": len(bound_refused),
        "binds_refused_but_bound": sum(admin.get_card(s).bound for s in bound_refused),
        "orders_paid": sum(s == "OK" for _, s in orders),
        "orders_unknown": sum(s != "OK" and s not in refused for _, s in orders),
        "codes_delivered": len(delivered),
        "codes_delivered_twice": len(delivered) - len(set(delivered)),
        "pool_sold": int(stock.sold),
        "pool_unaccounted": w.pool_stocked
        - int(stock.available + stock.reserved + stock.sold + stock.returned),
    }


def _statuses(p: Phase) -> str:
    return "/".join(f"{k}:{v}" for k, v in p.by_status.items())


def _admin_token(storage_url: str, var: Path) -> str:
    storage, domain = open_domain(storage_url, var)
    try:
        return domain.auth.create_token("admin", label="load test").token
    finally:
        storage.close()


@pytest.mark.timeout(900)  # --soak: a search and three 30 s phases, then the books
def test_load_and_overload(
    storage_url: str, tmp_path: Path, sizes: Sizes, seed: int, report: Report, backend: str
) -> None:
    ls = _sizes(sizes)
    var = tmp_path / "var"
    admin_token = _admin_token(storage_url, var)
    rng = random.Random(seed)
    mix = Mix()
    with (
        serve(storage_url, var, tmp_path / "serve.log") as server,
        workload(server.addr, admin_token, f"t{seed}") as w,
        Client(server.addr, admin_token, timeout=30.0) as admin,
    ):
        best, steps = search(
            w,
            mix,
            rng,
            start_rate=ls.start_rate,
            step_seconds=ls.step_s,
            max_steps=ls.max_steps,
            budget_s=ls.search_budget_s,
            deadline=ls.deadline_s,
        )
        # Even the lowest rate tried missing the target says the machine is busy, not that
        # the server is wrong: go on from that rate (the figures say so).
        rate = best or min(p.rate for p in steps)
        d, m = ls.deadline_s, ls.margin_s
        hold = run_phase(w, "hold 60%", 0.6 * rate, ls.phase_s, mix, rng, deadline=d, margin=m)
        time.sleep(0.5)
        over = run_phase(w, "overload 3x", 3 * rate, ls.phase_s, mix, rng, deadline=d, margin=m)
        time.sleep(1.0)
        after = run_phase(w, "recovery 60%", 0.6 * rate, ls.phase_s, mix, rng, deadline=d, margin=m)
        books = _books(w, admin)
    # CANCELLED under overload is grpc's own shedding, not cardmint's: grpc core holds the
    # calls that arrive before grpcio's one serving thread has taken them, and past
    # `grpc.server.max_pending_requests` (1000 per method) drops some at random (up to all at
    # 3000), which a client sees as CANCELLED (docs/RELIABILITY.md, "Overload"). The
    # generator never cancels; each call's x-request-id shows that the server never saw
    # any of them, and the books that none had an effect.
    over_cancelled = over.by_status.get("CANCELLED", 0)
    log = server.output()
    cancelled_seen = sum(f'"request_id": "{rid}"' in log for rid in over.cancelled_ids)
    over_other = sum(
        v for k, v in over.by_status.items() if k not in ("OK", "CANCELLED") and k not in REFUSED
    )
    report(
        "12-load",
        search_steps=len(steps),
        best_rate=round(best, 1),
        hold_rate=round(hold.rate, 1),
        hold_ok_per_s=round(hold.achieved_rate, 1),
        hold_p50_ms=round(hold.p50_ms, 1),
        hold_p99_ms=round(hold.p99_ms, 1),
        hold_errors=hold.errors,
        over_rate=round(over.rate, 1),
        over_ok_per_s=round(over.achieved_rate, 1),
        over_statuses=_statuses(over),
        over_other=over_other,
        over_cancelled=over_cancelled,
        over_cancelled_seen_by_server=cancelled_seen,
        over_refused_p99_ms=round(over.refused_p99_ms, 1),
        over_p99_ms=round(over.p99_ms, 1),
        over_max_service_ms=round(over.service_max_ms, 1),
        over_late_answers=over.over_deadline,
        recovery_p99_ms=round(after.p99_ms, 1),
        recovery_errors=after.errors,
        unanswered=hold.unanswered + over.unanswered + after.unanswered,
        **books,
    )
    for p in (hold, over, after):
        assert p.unanswered == 0 and p.over_deadline == 0, p
    assert hold.errors == 0, hold.by_status
    assert over_other == 0, over.by_status
    assert len(over.cancelled_ids) == over_cancelled and cancelled_seen == 0, over.cancelled_ids
    assert after.errors == 0, after.by_status
    assert books["spent_minus_acked"] == 0 and books["ledger_plus_spent"] == 0, books
    assert books["replays_answered_replayed"] == books["replays"], books
    assert books["binds_acked_not_bound"] == 0 and books["binds_refused_but_bound"] == 0, books
    # A payment whose answer was lost (a deadline in the search) may have delivered: sold
    # lies between what was acknowledged and that plus the unknown ones.
    assert (
        books["codes_delivered"] <= books["pool_sold"] <= books["codes_delivered"] + books["orders_unknown"]
    )
    assert books["codes_delivered_twice"] == 0, books
    assert books["pool_unaccounted"] == 0, books


def test_sigterm_under_load(
    storage_url: str, tmp_path: Path, sizes: Sizes, seed: int, report: Report, backend: str
) -> None:
    """SIGTERM while the mixed load runs: the calls in flight finish, later ones are refused
    UNAVAILABLE (or CANCELLED: grpc's answer to a call that reached it as it stopped), the
    server exits 0, and after a restart the books show that no refused call changed anything
    and no acknowledged one was lost."""
    rate, seconds, kill_after = (200.0, 10.0, 4.0) if sizes.soak else (60.0, 4.0, 1.5)
    var = tmp_path / "var"
    admin_token = _admin_token(storage_url, var)
    rng = random.Random(seed)
    log = tmp_path / "serve.log"
    server = ServerProcess(storage_url, var, log, grace=10.0)
    try:
        with workload(server.addr, admin_token, f"k{seed}") as w:
            result: list[Phase] = []
            runner = threading.Thread(
                target=lambda: result.append(run_phase(w, "sigterm", rate, seconds, Mix(), rng, deadline=5.0))
            )
            runner.start()
            time.sleep(kill_after)
            stopped_at = time.monotonic()
            exit_code = server.stop()
            stop_s = time.monotonic() - stopped_at
            runner.join(timeout=seconds + 30)
            assert not runner.is_alive() and result, "the load phase did not end"
    finally:
        server.stop()
    [phase] = result
    with serve(storage_url, var, log) as again, Client(again.addr, admin_token, timeout=30.0) as admin:
        books = _books(w, admin, refused=STOPPED)
    other = sum(v for k, v in phase.by_status.items() if k != "OK" and k not in STOPPED)
    report(
        "12-sigterm",
        rate=rate,
        calls=phase.offered,
        statuses=_statuses(phase),
        other=other,
        exit_code=exit_code,
        stop_ms=round(stop_s * 1e3),
        unanswered=phase.unanswered,
        **{k: v for k, v in books.items() if not k.startswith("replays")},
    )
    assert exit_code == 0
    assert phase.unanswered == 0 and other == 0, phase.by_status
    assert phase.by_status.get("OK", 0) > 0 and phase.by_status.get("UNAVAILABLE", 0) > 0, phase.by_status
    assert books["redeems_settled_by_replay"] == 0, books
    assert books["spent_minus_acked"] == 0 and books["ledger_plus_spent"] == 0, books
    assert books["binds_acked_not_bound"] == 0 and books["binds_refused_but_bound"] == 0, books
    assert (
        books["codes_delivered"] <= books["pool_sold"] <= books["codes_delivered"] + books["orders_unknown"]
    )
    assert books["codes_delivered_twice"] == 0 and books["pool_unaccounted"] == 0, books
