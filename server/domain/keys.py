"""Keys: the kernel over the wire — bulk check against the issued codes, and generate.

``Keyring`` (the key material) lives in ``keyring.py`` and is re-exported here.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cardmint.kernel import DEFAULT_GROUP, CorrectionStatus, KernelError, Packed, Status
from cardmint.server.observe import kernel_done
from cardmint.server.storage import CardState, Role

from ._context import Context, int_arg, require
from .auth import Principal
from .errors import InvalidArgument
from .keyring import Keyring

__all__ = ["STATUS_CODE", "CheckArrays", "CheckResult", "CheckStatus", "KeyService", "Keyring"]

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


# The byte each status travels as in ``CheckArrays.status`` (the proto's CodeStatus values).
STATUS_CODE: dict[CheckStatus, int] = {
    CheckStatus.OK: 1,
    CheckStatus.UNKNOWN: 2,
    CheckStatus.CORRECTED: 3,
    CheckStatus.BAD_CHECK: 4,
    CheckStatus.MALFORMED: 5,
    CheckStatus.FROZEN: 6,
    CheckStatus.EXPIRED: 7,
    CheckStatus.VOID: 8,
}
_STATUS_OF_CODE = {code: status for status, code in STATUS_CODE.items()}
# storage CardState byte -> CheckStatus byte, for codes the index says are issued.
_FROM_STATE = np.zeros(256, dtype=np.uint8)
_FROM_STATE[:] = STATUS_CODE[CheckStatus.UNKNOWN]
_FROM_STATE[CardState.MISSING] = STATUS_CODE[CheckStatus.UNKNOWN]
_FROM_STATE[CardState.ACTIVE] = STATUS_CODE[CheckStatus.OK]
_FROM_STATE[CardState.FROZEN] = STATUS_CODE[CheckStatus.FROZEN]
_FROM_STATE[CardState.VOID] = STATUS_CODE[CheckStatus.VOID]
_FROM_STATE[CardState.EXPIRED] = STATUS_CODE[CheckStatus.EXPIRED]


@dataclass(frozen=True)
class CheckArrays:
    """Verdicts on a batch as arrays, row i for input i.

    ``status``: one ``STATUS_CODE`` byte per row. ``normalized``: canonical codes
    (``S{length}``, all-NUL, i.e. b"", where malformed). ``suggestions``: row -> display-form
    suggestion, only for CORRECTED rows.
    """

    status: npt.NDArray[np.uint8]
    normalized: npt.NDArray[np.bytes_]
    suggestions: dict[int, str]

    def __len__(self) -> int:
        return len(self.status)

    def results(self) -> list[CheckResult]:
        """The same verdicts as one ``CheckResult`` per row."""
        return [
            CheckResult(code.decode("ascii"), _STATUS_OF_CODE[st], self.suggestions.get(i))
            for i, (st, code) in enumerate(zip(self.status.tolist(), self.normalized.tolist(), strict=True))
        ]


class KeyService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def check(
        self, principal: Principal, codes: Sequence[str | bytes], *, length: int = 16
    ) -> list[CheckResult]:
        """``check_packed`` with one ``CheckResult`` per code (for callers holding few codes)."""
        require(principal, _KEY_ROLES)
        length = code_length_arg(length)
        if len(codes) > self._ctx.config.max_check_batch:
            raise InvalidArgument.of("codes", f"at most {self._ctx.config.max_check_batch} codes per call")
        if not codes:
            return []
        raws = [c.encode("utf-8", "surrogatepass") if isinstance(c, str) else bytes(c) for c in codes]
        offsets = np.zeros(len(raws) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in raws], out=offsets[1:])
        return self.check_packed(principal, Packed(b"".join(raws), offsets), length=length).results()

    def check_packed(self, principal: Principal, codes: Packed, *, length: int = 16) -> CheckArrays:
        """Bulk check of raw codes packed in one buffer (``Packed``: data + n + 1 offsets).

        Array work throughout: the kernel checks and digests every row, the issued index
        (refreshed from the database's change feeds first) looks the digests up and knows
        each issued card's state, and only bad-check rows go through typo correction one by
        one. No per-code database query: single-code operations ask the database instead.
        """
        require(principal, _KEY_ROLES)
        length = code_length_arg(length)
        ctx = self._ctx
        n = codes.rows
        if n > ctx.config.max_check_batch:
            raise InvalidArgument.of("codes", f"at most {ctx.config.max_check_batch} codes per call")
        status = np.full(n, STATUS_CODE[CheckStatus.MALFORMED], dtype=np.uint8)
        suggestions: dict[int, str] = {}
        if n == 0:
            return CheckArrays(status, np.zeros(0, dtype=f"S{length}"), suggestions)
        ctx.index.refresh()
        started = time.perf_counter()
        try:
            checked = ctx.kernel.check(codes, length)
        except KernelError as e:
            raise InvalidArgument.of("codes", str(e)) from None
        kernel_done("check", n, time.perf_counter() - started)
        verdict = checked.status
        normalized = checked.codes.copy()

        ok = np.flatnonzero(verdict == Status.OK)
        if len(ok):
            keys = [key for _, key in ctx.rotation.lookup_keys()]
            status[ok] = _FROM_STATE[ctx.index.states_any(normalized[ok], keys, ctx.storage.now())]

        bad = np.flatnonzero(verdict == Status.BAD_CHECK)
        if len(bad):
            offsets = np.asarray(codes.offsets)
            data = memoryview(codes.data).cast("B")
            raws: list[str | bytes] = [bytes(data[offsets[i] : offsets[i + 1]]) for i in bad.tolist()]
            started = time.perf_counter()
            corrections = ctx.index.correct_any(raws, [k for _, k in ctx.rotation.lookup_keys()], length)
            kernel_done("correct", len(raws), time.perf_counter() - started)
            for i, corr in zip(bad.tolist(), corrections, strict=True):
                normalized[i] = corr.normalized.encode("ascii")
                if corr.status is CorrectionStatus.CORRECTED and corr.suggestion is not None:
                    status[i] = STATUS_CODE[CheckStatus.CORRECTED]
                    suggestions[i] = display(corr.suggestion)
                else:
                    status[i] = STATUS_CODE[CheckStatus.BAD_CHECK]

        normalized[status == STATUS_CODE[CheckStatus.MALFORMED]] = b""
        return CheckArrays(status, normalized, suggestions)

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
        started = time.perf_counter()
        try:
            batch = self._ctx.kernel.generate(count, length, group, prefix)
        except KernelError as e:
            raise InvalidArgument.of("prefix", str(e)) from None
        kernel_done("generate", count, time.perf_counter() - started)
        shown = self._ctx.kernel.display(batch.codes, group)
        return [c.decode("ascii") for c in shown.tolist()]
