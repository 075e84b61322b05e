"""``cardmint keys new|status|rotate|rehash|retire`` as an operator runs them, through the
configuration file the server uses (docs/operations.md, "Key rotation")."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from cardmint.server.app import open_domain
from cardmint.server.domain import CheckStatus, DomainConfig, Keyring, Role

from tests.cli_server.conftest import CLI_TIMEOUT, cli_env


def test_rotation_from_the_command_line(bindir: Path, tmp_path: Path, storage_url: str) -> None:
    conf = tmp_path / "cardmint.toml"
    conf.write_text(f'db = "{storage_url}"\nvar = "state"\n')
    keys = tmp_path / "state" / "keys"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["cardmint", *args, "--config", str(conf)], cwd=tmp_path, env=cli_env(bindir),
            capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    def domain_codes(lot_id: int) -> tuple[dict[str, str], list[CheckStatus]]:
        """The lot's codes (from the sealed copies) and their Keys.Check statuses."""
        storage, domain = open_domain(
            storage_url,
            tmp_path / "state",
            DomainConfig(order_sweep_seconds=0),
            keyring=Keyring.load(keys, {}),
        )
        try:
            op = domain.auth.authenticate("Bearer " + domain.auth.create_token(Role.ADMIN).token)
            cards: dict[str, str] = {}
            for chunk in domain.lots.stream_lot(op, lot_id):
                cards.update(zip(chunk.serials, chunk.codes, strict=True))
            return cards, [r.status for r in domain.keys.check(op, list(cards.values()))]
        finally:
            storage.close()

    cli("token", "create", "--role", "admin")  # creates the database and key 1
    storage, domain = open_domain(storage_url, tmp_path / "state", keyring=Keyring.load(keys, {}))
    try:
        op = domain.auth.authenticate("Bearer " + domain.auth.create_token(Role.OPERATOR).token)
        domain.catalog.create_product(
            op, sku="K", name="k", currency="CNY", denominations=(100,), validity_days=30
        )
        lot_id = domain.lots.create_lot(op, sku="K", count=5, face_value=100).id
    finally:
        storage.close()
    before, statuses = domain_codes(lot_id)
    assert statuses == [CheckStatus.OK] * 5

    out = cli("keys", "new")
    assert "wrote digest key 2" in out.stdout
    assert stat.S_IMODE((keys / "digest-2.key").stat().st_mode) == 0o600
    assert cli("keys", "status").stdout.splitlines() == [
        "digest key 1\tcurrent\t5 card(s)\theld",
        "digest key 2\tpending\t0 card(s)\theld",
    ]
    assert "digest key 2 is current" in cli("keys", "rotate").stdout
    out = cli("keys", "rehash", "--batch", "2")
    assert "rehashed 5 card(s) in 3 batch(es) under digest key 2; still under other keys: none" in out.stdout
    assert "digest key 1 retired" in cli("keys", "retire", "--key", "1").stdout
    (keys / "digest.key").unlink()
    assert cli("keys", "status").stdout.splitlines() == [
        "digest key 1\tretired\t0 card(s)\tNOT HELD by this server",
        "digest key 2\tcurrent\t5 card(s)\theld",
    ]
    after, statuses = domain_codes(lot_id)
    assert after == before and statuses == [CheckStatus.OK] * 5
    # refusals are one line, exit 2
    bad = subprocess.run(
        ["cardmint", "keys", "retire", "--key", "2", "--config", str(conf)], cwd=tmp_path,
        env=cli_env(bindir), capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "digest key 2 is current" in bad.stderr and "Traceback" not in bad.stderr
