"""Keys: the kernel over the wire — bulk check against the issued codes, and generate.

``Keyring`` (the key material) lives in ``keyring.py`` and is re-exported here.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cardmint.kernel import DEFAULT_GROUP, CorrectionStatus, KernelError, Status
from cardmint.server.storage import CardStatus, Role

from ._context import Context, int_arg, require
from .auth import Principal
from .errors import InvalidArgument
from .keyring import Keyring

__all__ = ["CheckResult", "CheckStatus", "KeyService", "Keyring"]

_KEY_ROLES = frozenset({Role.ADMIN, Role.OPERATOR, Role.MERCHANT})


class CheckStatus(enum.StrEnum):
    OK = "ok"
    UNKNOWN = "unknown"
    CORRECTED = "corrected"
    BAD_CHECK = "bad_check"
    MALFORMED = "malformed"
    FROZEN = "frozen"
    EXPIRED = "expired"
    VOID = "void"


@dataclass(frozen=True)
class CheckResult:
    normalized: str
    status: CheckStatus
    suggestion: str | None = None


def code_length_arg(length: object) -> int:
    return int_arg(length, "length", 8, 31)


def display(code: str, group: int = DEFAULT_GROUP) -> str:
    return "-".join(code[i : i + group] for i in range(0, len(code), group))


class KeyService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def check(
        self, principal: Principal, codes: Sequence[str | bytes], *, length: int = 16
    ) -> list[CheckResult]:
        require(principal, _KEY_ROLES)
        length = code_length_arg(length)
        ctx = self._ctx
        if len(codes) > ctx.config.max_check_batch:
            raise InvalidArgument.of("codes", f"at most {ctx.config.max_check_batch} codes per call")
        if not codes:
            return []
        raws = [c.encode("utf-8", "surrogatepass") if isinstance(c, str) else bytes(c) for c in codes]
        ctx.index.refresh()
        checked = ctx.kernel.check(raws, length)
        status = checked.status
        results: list[CheckResult | None] = [None] * len(raws)

        ok = np.flatnonzero(status == Status.OK)
        if len(ok):
            canon = checked.codes[ok]
            digests = ctx.kernel.digest(canon, ctx.keyring.digest_key)
            issued = ctx.index.lookup(digests)
            hits = ok[issued]
            for i in ok[~issued]:
                results[i] = CheckResult(checked.codes[i].decode("ascii"), CheckStatus.UNKNOWN)
            if len(hits):
                # The index says "issued"; the database is the truth for the card's state.
                with ctx.storage.read() as tx:
                    now = tx.now()
                    for i, d in zip(hits.tolist(), digests[issued], strict=True):
                        card = tx.get_card_by_digest(d.tobytes())
                        code = checked.codes[i].decode("ascii")
                        if card is None or card.status is CardStatus.VOID:
                            st = CheckStatus.VOID if card is not None else CheckStatus.UNKNOWN
                        elif card.status is CardStatus.FROZEN:
                            st = CheckStatus.FROZEN
                        elif card.expires_at is not None and card.expires_at <= now:
                            st = CheckStatus.EXPIRED
                        else:
                            st = CheckStatus.OK
                        results[i] = CheckResult(code, st)

        bad = np.flatnonzero(status == Status.BAD_CHECK).tolist()
        if bad:
            corrections = ctx.index.correct_many([raws[i] for i in bad], ctx.keyring.digest_key, length)
            for i, corr in zip(bad, corrections, strict=True):
                if corr.status is CorrectionStatus.CORRECTED and corr.suggestion is not None:
                    results[i] = CheckResult(corr.normalized, CheckStatus.CORRECTED, display(corr.suggestion))
                else:
                    results[i] = CheckResult(corr.normalized, CheckStatus.BAD_CHECK)

        return [r if r is not None else CheckResult("", CheckStatus.MALFORMED) for r in results]

    def generate(
        self,
        principal: Principal,
        count: int,
        *,
        length: int = 16,
        prefix: str = "",
        group: int = DEFAULT_GROUP,
    ) -> list[str]:
        require(principal, _KEY_ROLES)
        count = int_arg(count, "count", 1, self._ctx.config.max_generate)
        length = code_length_arg(length)
        group = int_arg(group, "group", 0, 31)
        if not isinstance(prefix, str) or len(prefix) > length - 8:
            raise InvalidArgument.of("prefix", f"at most {length - 8} symbols (codes keep >= 35 random bits)")
        try:
            batch = self._ctx.kernel.generate(count, length, group, prefix)
        except KernelError as e:
            raise InvalidArgument.of("prefix", str(e)) from None
        shown = self._ctx.kernel.display(batch.codes, group)
        return [c.decode("ascii") for c in shown.tolist()]
