"""Enterprise accounts through a running server: ``org`` and ``account`` (docs/accounts.md).

    cardmint org create NAME [--request-id ID]
    cardmint org add-department --org ORG NAME [--request-id ID]
    cardmint org departments --org ORG
    cardmint org add-member --org ORG --account A [--role org_admin|dept_manager|member]
                            [--department D] [--with-token [--token-label L] [--token-expires-in 30d]]
                            [--request-id ID]
    cardmint org remove-member --org ORG --account A [--request-id ID]
    cardmint org members --org ORG [--department D] [--limit N]
    cardmint account show [--account A]
    cardmint account verify-real-name --account A [--request-id ID]

Staff create organizations; an organization's admins and department managers manage their
own departments and members within their scope (the server decides: a call outside it is
answered as if the organization did not exist). Every change is idempotent by request id,
made up and printed when not given. ``add-member --with-token`` also mints the member's
token and prints it once, on its own line, for the member (a retry with the same request id
replays the membership but never the token again).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from . import _remote
from .admin import add_expires_in

if TYPE_CHECKING:
    from cardmint.client import Client
    from cardmint.v1 import account_pb2

ORG_ROLES = ("org_admin", "dept_manager", "member")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    org = sub.add_parser("org", help="organizations: departments and members (docs/accounts.md)")
    osub = org.add_subparsers(dest="org_action", required=True, metavar="ORG_ACTION")
    create = osub.add_parser("create", help="staff: open an organization")
    create.add_argument("name", help="its unique name")
    dept = osub.add_parser("add-department", help="add a department to an organization")
    dept.add_argument("name", help="unique within the organization")
    depts = osub.add_parser("departments", help="an organization's departments")
    add = osub.add_parser("add-member", help="make an account a member (or change its role or scope)")
    add.add_argument("--account", required=True, help="the member's account")
    add.add_argument("--role", choices=ORG_ROLES, default="member", help="default: member")
    add.add_argument("--department", default="", help="scope it to this department (default: the whole org)")
    add.add_argument("--with-token", action="store_true", help="also mint the member's token (printed once)")
    add.add_argument("--token-label", default="", help="a note stored with the token")
    add_expires_in(add, "--token-expires-in")
    remove = osub.add_parser(
        "remove-member", help="take an account out (it keeps its cards, as an individual)"
    )
    remove.add_argument("--account", required=True, help="the member's account")
    members = osub.add_parser("members", help="an organization's members, oldest first")
    members.add_argument("--department", default="", help="only this department's")
    members.add_argument("--limit", type=int, default=0, help="at most this many (default 0: all)")
    for p in (dept, depts, add, remove, members):
        p.add_argument("--org", required=True, help="the organization's name")
    for p in (create, dept, add, remove):
        p.add_argument("--request-id", help="idempotency key (default: a new one, printed)")
    for p in (create, dept, depts, add, remove, members):
        _remote.add_common(p)

    acct = sub.add_parser("account", help="an account's facts: kind, real-name mark, membership")
    asub = acct.add_subparsers(dest="account_action", required=True, metavar="ACCOUNT_ACTION")
    show = asub.add_parser("show", help="an account's facts (default: a customer token's own)")
    show.add_argument("--account", default="", help="the account (staff, or managers for their members)")
    verify = asub.add_parser("verify-real-name", help="staff: record that the holder's real name was checked")
    verify.add_argument("--account", required=True, help="the account")
    verify.add_argument("--request-id", help="idempotency key (default: a new one, printed)")
    for p in (show, verify):
        _remote.add_common(p)


def member_line(m: account_pb2.Member) -> str:
    scope = f"department {m.department}" if m.department else "whole organization"
    return f"{m.account}  {m.role}  {scope}  since {_remote.fmt_utc(m.added_at)}"


def facts_line(f: account_pb2.AccountFacts) -> str:
    parts = [f"account {f.account}", f.kind]
    if f.HasField("real_name_verified_at"):
        parts.append(f"real name verified {_remote.fmt_utc(f.real_name_verified_at)}")
    else:
        parts.append("real name not verified")
    if f.HasField("member"):
        m = f.member
        where = f"department {m.department}" if m.department else "the whole organization"
        parts.append(f"{m.role} of {m.organization} ({where})")
    return ", ".join(parts)


def _org(c: Client, args: argparse.Namespace) -> None:
    action = args.org_action
    if action == "create":
        o = c.create_organization(args.name, request_id=_remote.request_id(args))
        print(f"organization {o.name} (id {o.id}), opened {_remote.fmt_utc(o.created_at)}")
    elif action == "add-department":
        d = c.create_department(args.org, args.name, request_id=_remote.request_id(args))
        print(f"department {d.name} of {d.organization} (id {d.id})")
    elif action == "departments":
        _remote.print_lines(c.departments(args.org), lambda d: f"{d.name}  (id {d.id})", 0, "no departments")
    elif action == "add-member":
        r = c.add_member(
            args.org,
            args.account,
            request_id=_remote.request_id(args),
            role=args.role,
            department=args.department,
            with_token=args.with_token,
            token_label=args.token_label,
            token_expires_in=args.token_expires_in,
        )
        replay = " (replayed: no new token)" if r.replayed else ""
        print(f"member {member_line(r.member)}{replay}")
        if r.token:
            expires = (
                f", expires {_remote.fmt_utc(r.token_expires_at)}" if r.HasField("token_expires_at") else ""
            )
            print(f"token {r.token_id} for {r.member.account} (shown once{expires}):")
            print(r.token)
    elif action == "remove-member":
        c.remove_member(args.org, args.account, request_id=_remote.request_id(args))
        print(f"{args.account} is no longer a member of {args.org}")
    else:  # members
        page = _remote.page_size(args.limit)
        listed = c.members(args.org, department=args.department, page_size=page)
        _remote.print_lines(listed, member_line, args.limit, "no members")


def _run(args: argparse.Namespace) -> int:
    with _remote.connect(args) as c:
        if args.command == "org":
            _org(c, args)
        elif args.account_action == "show":
            print(facts_line(c.get_account(args.account)))
        else:
            print(facts_line(c.verify_real_name(args.account, request_id=_remote.request_id(args))))
    return 0


def run(args: argparse.Namespace) -> int:
    return _remote.guarded(_run, args)
