"""README.md's order walk-through, run as written against ``cardmint serve`` on 127.0.0.1.

The commands are the README's own: the ``sh`` block between the ``order-walkthrough``
markers, run by bash, so the walk-through cannot rot. The only changes: ``serve`` listens on
an ephemeral port (``CARDMINT_SERVER`` points the commands at it) and, on PostgreSQL, it
and ``token create`` get ``--db`` (on SQLite both use ./var as the README's reader does).
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
from pathlib import Path

from tests.cli_server.conftest import cli_env, wait_for_port

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- order-walkthrough:start -->", "<!-- order-walkthrough:end -->"


def walkthrough() -> str:
    text = README.read_text()
    assert text.count(START) == 1 and text.count(END) == 1, "the README marks one walk-through"
    inner = text.split(START, 1)[1].split(END, 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", inner, flags=re.S | re.M)
    assert len(blocks) == 1, "one sh block between the markers"
    return str(blocks[0])


def test_the_readme_walks_through_a_whole_order(bindir: Path, tmp_path: Path, storage_url: str) -> None:
    script = walkthrough()
    commands = [ln for ln in script.splitlines() if ln.strip()]
    actions = [shlex.split(ln.split("cardmint ", 1)[1])[:2] for ln in commands if "cardmint order" in ln]
    # The walk-through covers the whole flow (the issue: stock, order, pay, see, list, refund).
    assert {a[1] for a in actions} >= {"stock", "pool", "create", "pay", "get", "list", "refund"}
    pg = storage_url.startswith("postgresql")
    if pg:
        db = f" --db {shlex.quote(storage_url)}"
        script = script.replace("cardmint token create ", f"cardmint token create{db} ")
    work = tmp_path / "work"
    work.mkdir()
    env = cli_env(bindir)
    serve = ["cardmint", "serve", "--listen", "127.0.0.1:0", *(["--db", storage_url] if pg else [])]
    server = subprocess.Popen(
        serve, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        port = wait_for_port(server)
        env["CARDMINT_SERVER"] = f"127.0.0.1:{port}"
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
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
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith("created product SHOP-50\t")
    assert re.fullmatch(r"pool SHOP-50: lot \d+, 20 codes for sale", out[1])
    assert out[2] == "pool SHOP-50 50.00 CNY: 20 available, 0 reserved, 0 sold, 0 returned"
    m = re.match(
        r"order (\d+): reserved, 2 x SHOP-50 at 50\.00 CNY, total 100\.00 CNY, account alice, pay by ", out[3]
    )
    assert m, out[3]
    head = f"order {m.group(1)}: delivered, 2 x SHOP-50 at 50.00 CNY, total 100.00 CNY, account alice"
    paid = f"{head}, paid 100.00 CNY (payment gw-walk-1)"
    code = r"  (\d+)\t([0-9A-Z*]{4}-[0-9A-Z*]{4}-[0-9A-Z*]{4}-[0-9A-Z]{4})\t50\.00 CNY\t(\w+)"

    def codes(lines: list[str]) -> list[tuple[str, str, str]]:
        found = [re.fullmatch(code, ln) for ln in lines]
        assert all(found), lines
        return [(f.group(1), f.group(2), f.group(3)) for f in found if f]

    assert out[4] == paid
    masked = codes(out[5:7])
    assert all(c.startswith("****-****-****-") and s == "active" for _, c, s in masked)
    # The gateway's repeated notification: the first outcome, nothing delivered twice.
    assert out[7] == f"{paid} (replayed: this id was already done; nothing changed now)"
    assert codes(out[8:10]) == masked
    # The buyer sees her codes in full: the same cards, the masked ones' last four symbols.
    assert out[10] == paid
    full = codes(out[11:13])
    assert [s for s, _, _ in full] == [s for s, _, _ in masked]
    assert all("*" not in c and c[-4:] == m[-4:] for (_, c, _), (_, m, _) in zip(full, masked, strict=True))
    assert len({c for _, c, _ in full}) == 2
    assert out[13] == paid  # order list --account alice: the one order
    assert (
        out[14]
        == f"{paid.replace('delivered', 'refunded')}, closed: refund requested by customer: changed my mind"
    )
    assert [(s, st) for s, _, st in codes(out[15:17])] == [(s, "void") for s, _, _ in masked]
    assert out[17] == "pool SHOP-50 50.00 CNY: 18 available, 0 reserved, 0 sold, 2 returned"
    assert len(out) == 18
