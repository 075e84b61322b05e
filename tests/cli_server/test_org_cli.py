"""``cardmint org`` and ``cardmint account`` against a real server (SQLite and PostgreSQL):
an organization set up from the command line, its manager's token used for what managers
may do, and the refusals one line each."""

from __future__ import annotations

from collections.abc import Callable
from subprocess import CompletedProcess

Cli = Callable[..., CompletedProcess[str]]


def _refused(p: CompletedProcess[str]) -> str:
    """The refusal's one line (after the made-up request id's, when one was printed)."""
    assert p.returncode != 0 and p.stdout == "" and "Traceback" not in p.stderr
    return p.stderr.splitlines()[-1]


def _ok(p: CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_an_organization_from_the_command_line(cli: Cli) -> None:
    opened = _ok(cli("org", "create", "acme", "--request-id", "open-acme"))
    assert opened.startswith("organization acme (id ") and " UTC\n" in opened
    assert _ok(cli("org", "create", "acme", "--request-id", "open-acme")) == opened  # a retry
    dup = cli("org", "create", "acme")
    assert dup.returncode == 1 and _refused(dup).startswith("cardmint: ORGANIZATION_EXISTS")

    assert _ok(cli("org", "add-department", "--org", "acme", "sales")).startswith("department sales of acme")
    made = cli("org", "add-member", "--org", "acme", "--account", "boss", "--role", "org_admin",
               "--with-token", "--token-expires-in", "30d", "--request-id", "boss-1")  # fmt: skip
    lines = _ok(made).splitlines()
    assert lines[0].startswith("member boss  org_admin  whole organization  since ")
    assert lines[1].startswith("token ") and "for boss (shown once, expires " in lines[1]
    boss = lines[2]
    assert len(lines) == 3 and len(boss) > 20
    again = _ok(cli("org", "add-member", "--org", "acme", "--account", "boss", "--role", "org_admin",
                    "--with-token", "--token-expires-in", "30d", "--request-id", "boss-1"))  # fmt: skip
    assert again.splitlines() == [lines[0] + " (replayed: no new token)"]

    # The organization's admin manages its members with its own token.
    ann = _ok(
        cli("org", "add-member", "--org", "acme", "--account", "ann", "--department", "sales", token=boss)
    )
    assert ann.startswith("member ann  member  department sales  since ")
    assert _ok(cli("org", "departments", "--org", "acme", token=boss)).startswith("sales  (id ")
    listed = _ok(cli("org", "members", "--org", "acme", token=boss)).splitlines()
    assert [ln.split("  ")[0] for ln in listed] == ["boss", "ann"]
    assert _ok(cli("org", "members", "--org", "acme", "--department", "sales", token=boss)).startswith(
        "ann  "
    )
    assert len(_ok(cli("org", "members", "--org", "acme", "--limit", "1")).splitlines()) == 1
    facts = _ok(cli("account", "show", "--account", "ann", token=boss))
    assert (
        facts
        == "account ann, organization_member, real name not verified, member of acme (department sales)\n"
    )

    # Staff verify real names; an organization's admin may not.
    denied = cli("account", "verify-real-name", "--account", "ann", token=boss)
    assert denied.returncode == 2 and _refused(denied).startswith("cardmint: PERMISSION_DENIED")
    verified = _ok(cli("account", "verify-real-name", "--account", "ann", "--request-id", "kyc-ann"))
    assert ", real name verified " in verified and " UTC, member of acme" in verified

    # Outside its scope an organization does not exist for a manager.
    assert _ok(cli("org", "create", "globex")).startswith("organization globex")
    hidden = cli("org", "members", "--org", "globex", token=boss)
    assert hidden.returncode == 1 and _refused(hidden).startswith("cardmint: ORGANIZATION_NOT_FOUND")

    assert _ok(cli("org", "remove-member", "--org", "acme", "--account", "ann", token=boss)) == (
        "ann is no longer a member of acme\n"
    )
    assert _ok(cli("account", "show", "--account", "ann")).startswith(
        "account ann, individual, real name verified "
    )
    assert [ln.split("  ")[0] for ln in _ok(cli("org", "members", "--org", "acme")).splitlines()] == ["boss"]
    bad = cli("org", "add-member", "--org", "acme", "--account", "x", "--role", "king")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
