"""KeyService: the kernel over the wire (bulk check against issued codes, generate)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from cardmint.server.domain import CheckStatus, Domain
from cardmint.v1 import keys_pb2, keys_pb2_grpc

from ._convert import pack, unpack
from .auth import current_principal

__all__ = ["KeyServicer"]

# One byte per code on the wire; the values are the proto enum's.
_STATUS_BYTE: dict[CheckStatus, int] = {
    CheckStatus.OK: keys_pb2.CODE_STATUS_OK,
    CheckStatus.UNKNOWN: keys_pb2.CODE_STATUS_UNKNOWN,
    CheckStatus.CORRECTED: keys_pb2.CODE_STATUS_CORRECTED,
    CheckStatus.BAD_CHECK: keys_pb2.CODE_STATUS_BAD_CHECK,
    CheckStatus.MALFORMED: keys_pb2.CODE_STATUS_MALFORMED,
    CheckStatus.FROZEN: keys_pb2.CODE_STATUS_FROZEN,
    CheckStatus.EXPIRED: keys_pb2.CODE_STATUS_EXPIRED,
    CheckStatus.VOID: keys_pb2.CODE_STATUS_VOID,
}
DEFAULT_GENERATE_CHUNK = 65_536
MAX_GENERATE_CHUNK = 1 << 20


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._keys = domain.keys

    def Check(  # noqa: N802 - grpc's generated method names
        self, request_iterator: Iterator[keys_pb2.CheckRequest], context: grpc.ServicerContext
    ) -> Iterator[keys_pb2.CheckResponse]:
        principal = current_principal()
        length: int | None = None
        for request in request_iterator:
            if length is None:  # the first chunk sets the length for the whole stream
                length = request.length or 16
            results = self._keys.check(principal, unpack(request.codes, "codes"), length=length)
            yield keys_pb2.CheckResponse(
                status=bytes(_STATUS_BYTE[r.status] for r in results),
                normalized=pack([r.normalized for r in results]),
                suggestions=pack([r.suggestion or "" for r in results]),
            )

    def Generate(  # noqa: N802 - grpc's generated method names
        self, request: keys_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[keys_pb2.GenerateResponse]:
        codes = self._keys.generate(
            current_principal(),
            request.count,
            length=request.length or 16,
            prefix=request.prefix,
            group=request.group if request.HasField("group") else 4,
        )
        step = min(request.chunk_size or DEFAULT_GENERATE_CHUNK, MAX_GENERATE_CHUNK)
        for start in range(0, len(codes), step):
            yield keys_pb2.GenerateResponse(codes=pack(codes[start : start + step]))
