"""What every service shares: storage, keys, kernel, limits, and the small rules they all
apply (role checks, turning storage failures into domain errors, input validation)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from cardmint.kernel import Kernel
from cardmint.server.domain_config import DomainConfig
from cardmint.server.storage import (
    Account,
    IdempotencyConflictError,
    Role,
    Storage,
    TransientError,
    UnitOfWork,
)

from .auth import Principal, account_arg
from .errors import Contention, DeadlinePassed, IdempotencyKeyReused, InvalidArgument, PermissionDenied
from .issued_index import IssuedIndex
from .keyring import Keyring
from .profiles import Profile
from .rekey import DigestKeys

T = TypeVar("T")

STAFF = frozenset({Role.ADMIN, Role.OPERATOR})

# The deadline (time.monotonic()) of the call being handled, set by the API layer for unary
# calls; None: no deadline (or not a call: the sweeper, the CLI).
CALL_DEADLINE: ContextVar[float | None] = ContextVar("cardmint_call_deadline", default=None)
MAX_AMOUNT = 10**12


class Wake:
    """Wakes this process's event subscribers after a commit that emitted events."""

    def __init__(self) -> None:
        self.condition = threading.Condition()

    def __call__(self) -> None:
        with self.condition:
            self.condition.notify_all()

    def wait(self, seconds: float) -> None:
        with self.condition:
            self.condition.wait(seconds)


@dataclass(frozen=True)
class Context:
    storage: Storage
    keyring: Keyring
    kernel: Kernel
    config: DomainConfig
    index: IssuedIndex
    profile: Profile
    rotation: DigestKeys  # which digest keys codes are looked up under; new lots' key
    wake: Wake = field(default_factory=Wake)
    closing: threading.Event = field(default_factory=threading.Event)  # set once shutting down

    def run(self, work: Callable[[UnitOfWork], T]) -> T:
        """``work`` in one transaction, retried when the database aborts it under contention.

        Every ledger row the transaction writes records the deployment's compliance profile.
        A unit of work that ends after the calling client's deadline rolls back
        (``DeadlinePassed``): nothing is committed for a caller that stopped waiting.
        """
        tag = self.profile.tag
        deadline = CALL_DEADLINE.get()

        def in_time() -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlinePassed()

        def judged(tx: UnitOfWork) -> T:
            # Checked before the work too: under overload a unit may reach the writer after
            # its caller gave up, and its work would be done only to be rolled back.
            in_time()
            tx.judged_by = tag
            result = work(tx)
            in_time()
            return result

        in_time()  # not even queued for the writer
        try:
            return self.storage.run(judged)
        except TransientError as e:
            raise Contention() from e
        except IdempotencyConflictError as e:
            raise IdempotencyKeyReused() from e


def require(principal: Principal, roles: Collection[Role]) -> None:
    if principal.role not in roles:
        raise PermissionDenied(metadata={"role": principal.role.value})


def int_arg(value: object, field: str, lo: int, hi: int) -> int:
    # bool is an int subclass and float money is refused outright: no float ever gets in.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument.of(field, "must be an integer")
    if not lo <= value <= hi:
        raise InvalidArgument.of(field, f"must be between {lo} and {hi}")
    return value


def request_id_arg(value: object) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 128
        or not value.isascii()
        or not value.isprintable()
    ):
        raise InvalidArgument.of("request_id", "must be 1-128 printable ASCII characters")
    return value


def resolve_account(tx: UnitOfWork, principal: Principal, account: str | None) -> Account:
    """The account an operation acts on: customers only ever their own; staff name one.

    Call inside a write transaction: a staff-named account is created on first use (an
    account row is only a name, and creating it reveals nothing).
    """
    if principal.role is Role.CUSTOMER:
        if account is not None and account != principal.account:
            raise PermissionDenied("customers act on their own account only", metadata={"role": "customer"})
        found = tx.get_account(principal.account_id) if principal.account_id is not None else None
        if found is None:
            raise PermissionDenied("this customer token has no account", metadata={"role": "customer"})
        return found
    return tx.ensure_account(account_arg(account))


# One encoder for every detail: json.dumps with options builds a new one per call, and
# details are written inside the write transaction (on SQLite, the writer gate's turn).
_DETAIL = json.JSONEncoder(sort_keys=True, default=str)


def detail(**kw: object) -> str:
    return _DETAIL.encode(kw)
