"""The operators' and holders' commands against a real server (SQLite and PostgreSQL):
``card history``, ``card view``, ``card freeze|unfreeze``, ``compliance reports|blacklist``
and ``events``. What each prints is checked against what the server holds."""

from __future__ import annotations

import csv
import json
import os
import select
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from cardmint.server.app import Running
from cardmint.v1 import event_pb2

from tests.cli_server.conftest import cli_env

Cli = Callable[..., CompletedProcess[str]]


def _lot(cli: Cli, tmp_path: Path, sku: str, n: int, face: str = "100") -> list[tuple[str, str]]:
    assert cli("product", "create", "--sku", sku, "--name", sku, "--currency", "CNY",
               "--denominations", face).returncode == 0  # fmt: skip
    out = f"{sku}.csv"
    assert cli("lot", "create", "--product", sku, "-n", str(n), "--out", out).returncode == 0
    rows = list(csv.reader((tmp_path / "work" / out).read_text().splitlines()))[1:]
    return [(r[0], r[1]) for r in rows]


def _events(p: CompletedProcess[str]) -> list[dict[str, object]]:
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def test_card_history_newest_first_with_every_field(cli: Cli, tmp_path: Path) -> None:
    [(serial, code), (other, code2)] = _lot(cli, tmp_path, "HIST", 2)
    assert cli("card", "bind", "--code", code, "--account", "alice").returncode == 0
    assert cli("card", "bind", "--code", code2, "--account", "alice").returncode == 0
    p = cli("redeem", "--card", serial, "--amount", "30", "--request-id", "spend-1")
    assert p.returncode == 0, p.stderr
    spent = int(p.stdout.split("transaction ")[1].split(";")[0])
    assert cli("reverse", "--transaction", str(spent), "--amount", "10", "--currency", "CNY",
               "--request-id", "back-1").returncode == 0  # fmt: skip

    h = cli("card", "history", "--serial", serial)
    assert h.returncode == 0, h.stderr
    lines = h.stdout.splitlines()
    assert len(lines) == 3
    assert "  reverse  10.00 CNY  balance 80.00 CNY  " in lines[0]
    assert f"card {serial}  request back-1  answers #{spent}" in lines[0]
    assert f"  #{spent}  redeem  -30.00 CNY  balance 70.00 CNY  card {serial}  request spend-1" in lines[1]
    assert "  bind  " in lines[2] and f"card {serial}" in lines[2]
    assert all(line[:4].isdigit() and " UTC  #" in line for line in lines)

    one = cli("card", "history", "--serial", serial, "--limit", "1")
    assert one.stdout.splitlines() == lines[:1]
    # The account's history spans both cards; the other card has its bind only.
    acct = cli("card", "history", "--account", "alice").stdout.splitlines()
    assert len(acct) == 4 and sum(f"card {other}" in line for line in acct) == 1
    assert cli("card", "history", "--serial", serial, "--limit", "-1").returncode == 2


def test_card_view_masked_then_full_for_the_holder_only(cli: Cli, server: Running, tmp_path: Path) -> None:
    [(serial, code)] = _lot(cli, tmp_path, "VIEW", 1)
    assert cli("card", "bind", "--code", code, "--account", "alice").returncode == 0
    holder = server.domain.auth.create_token("customer", account="alice").token

    masked = cli("card", "view", "--serial", serial, token=holder)
    assert masked.returncode == 0, masked.stderr
    shown = masked.stdout.split(": ", 1)[1].split(" ")[0]
    assert shown.endswith(code[-4:]) and code[:4] not in shown and "(masked" in masked.stdout

    full = cli("card", "view", "--serial", serial, "--full", token=holder)
    assert full.returncode == 0, full.stderr
    assert full.stdout == f"card {serial}: {code}\n"
    # Staff and other customers never see it.
    assert cli("card", "view", "--serial", serial, "--full").returncode != 0
    bob = server.domain.auth.create_token("customer", account="bob").token
    other = cli("card", "view", "--serial", serial, "--full", token=bob)
    assert other.returncode != 0 and code not in other.stdout + other.stderr


def test_freeze_and_unfreeze_stop_and_restart_spending(cli: Cli, server: Running, tmp_path: Path) -> None:
    [(serial, _code)] = _lot(cli, tmp_path, "FRZ", 1)
    f = cli("card", "freeze", "--serial", serial, "--reason", "chargeback on the order")
    assert f.returncode == 0, f.stderr
    assert f.stdout.startswith(f"frozen: card {serial}, ") and ", frozen, " in f.stdout
    refused = cli("redeem", "--card", serial, "--amount", "5")
    assert refused.returncode == 1 and "CARD_FROZEN" in refused.stderr
    assert cli("card", "freeze", "--serial", serial, "--reason", "again").returncode == 0  # a no-op

    customer = server.domain.auth.create_token("customer", account="carol").token
    denied = cli("card", "unfreeze", "--serial", serial, "--reason", "mine", token=customer)
    assert denied.returncode == 2 and "Traceback" not in denied.stderr
    u = cli("card", "unfreeze", "--serial", serial, "--reason", "chargeback withdrawn")
    assert u.returncode == 0 and ", active, " in u.stdout
    assert cli("redeem", "--card", serial, "--amount", "5").returncode == 0

    # One event each way (the repeated freeze changed nothing), in order, with the reason.
    evs = _events(cli("events", "--kind", "card.frozen", "--kind", "card.unfrozen"))
    assert [e["kind"] for e in evs] == ["card.frozen", "card.unfrozen"]
    assert evs[0]["subject"] == evs[1]["subject"] == f"card:{serial}"
    assert "chargeback on the order" in json.dumps(evs[0]["detail"])


def test_events_resume_after_the_last_id_and_refuse_unknown_kinds(cli: Cli, tmp_path: Path) -> None:
    serials = [s for s, _ in _lot(cli, tmp_path, "EVT", 3)]
    for s in serials:
        assert cli("card", "freeze", "--serial", s, "--reason", "test").returncode == 0
    every = cli("events")
    evs = _events(every)
    ids = [int(str(e["id"])) for e in evs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    frozen = [e for e in evs if e["kind"] == "card.frozen"]
    assert len(frozen) == 3 and all(str(e["at"]).endswith("Z") for e in frozen)
    assert f"last event id {ids[-1]} (to resume: --after {ids[-1]})" in every.stderr

    # Resuming after the second frozen card's event gives exactly what followed it.
    cut = int(str(frozen[1]["id"]))
    rest = _events(cli("events", "--after", str(cut)))
    assert rest == [e for e in evs if int(str(e["id"])) > cut]
    assert _events(cli("events", "--after", str(ids[-1]))) == []

    bad = cli("events", "--kind", "card.melted")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("cardmint: unknown event kind card.melted; the kinds: ")
    assert "aml.report, card.frozen, card.locked" in bad.stderr
    assert cli("events", "--for", "1").returncode == 2  # --for needs --follow


def test_events_follow_prints_what_commits_meanwhile_until_interrupted(
    cli: Cli, server: Running, bindir: Path, tmp_path: Path
) -> None:
    [(serial, _)] = _lot(cli, tmp_path, "FOL", 1)
    head = _events(cli("events"))
    after = int(str(head[-1]["id"])) if head else 0
    token = server.domain.auth.create_token("admin").token
    env = cli_env(bindir, CARDMINT_TOKEN=token, CARDMINT_SERVER=f"127.0.0.1:{server.port}")
    follower = subprocess.Popen(
        ["cardmint", "events", "--follow", "--for", "300", "--after", str(after), "--kind", "card.frozen"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # It starts after `after`, so the freeze is seen however late it subscribes.
        assert cli("card", "freeze", "--serial", serial, "--reason", "watch me").returncode == 0
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 60)
        assert ready, "no event within 60 s"
        line = follower.stdout.readline()
        # A supervisor's stop: as clean as Ctrl-C, exit 0 (SIGINT itself may be ignored here:
        # a background job of a non-interactive shell, as CI can run us, inherits it ignored).
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=60)  # stopped by the signal, long before --for
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    event = json.loads(line)
    assert event["kind"] == "card.frozen" and "watch me" in json.dumps(event["detail"])
    assert out == "" and f"last event id {event['id']} (to resume: --after {event['id']})" in err


def test_blacklist_import_freezes_issued_cards_once(cli: Cli, tmp_path: Path) -> None:
    [(serial, code), (kept, _)] = _lot(cli, tmp_path, "BLK", 2)
    stranger = cli("keys", "generate", "-n", "1").stdout.strip()
    work = tmp_path / "work"
    (work / "stolen.txt").write_text(f"{code}\n\nnot-a-code\n{stranger}\n")

    p = cli("compliance", "blacklist", "stolen.txt", "--source", "partner-a")
    assert p.returncode == 0, p.stderr
    assert p.stdout == (
        "3 codes from partner-a: 1 malformed, 2 new on the blacklist, 1 issued cards, 1 frozen now\n"
    )
    assert ", frozen, " in cli("card", "get", "--serial", serial).stdout
    assert ", active, " in cli("card", "get", "--serial", kept).stdout
    again = cli("compliance", "blacklist", "stolen.txt", "--source", "partner-a")
    assert again.stdout == (
        "3 codes from partner-a: 1 malformed, 0 new on the blacklist, 1 issued cards, 0 frozen now\n"
    )
    empty = work / "empty.txt"
    empty.write_text("\n")
    assert cli("compliance", "blacklist", "empty.txt", "--source", "x").returncode == 2


def test_compliance_reports_list_the_aml_records(cli: Cli, tmp_path: Path) -> None:
    [(serial, _)] = _lot(cli, tmp_path, "AML", 1, face="60000")
    assert cli("compliance", "reports").stdout == "no reports\n"
    assert cli("redeem", "--card", serial, "--amount", "50000.01", "--request-id", "big").returncode == 0
    assert cli("redeem", "--card", serial, "--amount", "1", "--request-id", "small").returncode == 0

    p = cli("compliance", "reports", "--kind", "aml")
    assert p.returncode == 0, p.stderr
    [line] = p.stdout.splitlines()
    assert line.startswith("#") and "  aml  card:" in line
    assert "  50000.01 CNY  platform@" in line and '"redeem"' in line
    assert cli("compliance", "reports", "--kind", "alert").stdout == "no reports\n"
    assert cli("compliance", "reports", "--limit", "1").stdout.splitlines() == [line]


class _FakeFeed:
    """Stands in for the client: a stream of events 1..n; ``kill_at`` sends this process
    SIGTERM while the stream waits for event ``kill_at`` (before yielding it)."""

    def __init__(self, n: int, kill_at: int = 0) -> None:
        self.n, self.kill_at = n, kill_at

    def subscribe_events(self, after_id: int = 0, **_: object) -> Iterator[event_pb2.Event]:
        for i in range(after_id + 1, self.n + 1):
            if i == self.kill_at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield event_pb2.Event(id=i, kind="card.frozen", subject=f"card:{i}", detail_json="{}")


def _follow(feed: _FakeFeed, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[int]]:
    import argparse

    from cardmint.cli import events

    args = argparse.Namespace(after=0, kind=[], seconds=None)
    last = events._follow(feed, args)  # type: ignore[arg-type]
    printed = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    return last, printed


def test_a_stop_while_waiting_reports_the_last_printed_event(capsys: pytest.CaptureFixture[str]) -> None:
    last, printed = _follow(_FakeFeed(5, kill_at=3), capsys)
    assert printed == [1, 2] and last == 2


def test_a_stop_while_printing_lets_that_line_and_its_id_go_out_together(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cardmint.cli import events

    shown = events.event_json

    def slow_line(e: event_pb2.Event) -> str:
        if e.id == 2:  # the signal lands between taking event 2 and recording its id
            os.kill(os.getpid(), signal.SIGTERM)
        return shown(e)

    monkeypatch.setattr(events, "event_json", slow_line)
    before = signal.getsignal(signal.SIGTERM)
    last, printed = _follow(_FakeFeed(5), capsys)
    assert printed == [1, 2] and last == 2
    assert signal.getsignal(signal.SIGTERM) is before  # put back as it was
