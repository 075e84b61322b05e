"""docs/api.md's error table lists every domain error (server/domain/errors.py), with the
status code the server answers and the client exception that reason becomes, and nothing
that is not one."""

from __future__ import annotations

import re
from pathlib import Path

import cardmint.client as client
from cardmint.server.domain.errors import ALL_ERRORS, DomainError

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def error_table() -> dict[str, tuple[str, str]]:
    """reason -> (status code, client exception) from the table under "## Errors"."""
    section = DOC.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([A-Z_]+)`", cells[0]) if line.startswith("|") else None
        if m is None:
            continue
        assert m.group(1) not in rows, f"{m.group(1)} is listed twice"
        exc = re.match(r"`(\w+)`", cells[3])
        assert exc is not None, f"{m.group(1)}: no client exception named"
        rows[m.group(1)] = (cells[1], exc.group(1))
    return rows


def test_every_domain_error_is_in_the_table_with_its_status_code() -> None:
    table = error_table()
    every: tuple[type[DomainError], ...] = (*ALL_ERRORS, DomainError)
    errors = {e.reason: e for e in every}
    missing = sorted(set(errors) - set(table))
    assert missing == [], f"docs/api.md's error table lacks {missing}"
    extra = sorted(set(table) - set(errors))
    assert extra == [], f"docs/api.md lists reasons no domain error has: {extra}"
    for reason, error in errors.items():
        assert table[reason][0] == error.kind.value, f"{reason}: the table says {table[reason][0]}"


def test_every_row_names_the_client_exception_of_its_reason() -> None:
    for reason, (_, name) in error_table().items():
        exc = getattr(client, name, None)
        assert isinstance(exc, type) and issubclass(exc, client.CardmintError), f"{reason}: {name}?"
        assert exc.reason == reason, f"{reason}: cardmint.client.{name} is {exc.reason}"
