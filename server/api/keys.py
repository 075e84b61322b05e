"""KeyService: the kernel over the wire (bulk check against issued codes, generate)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import numpy.typing as npt
from cardmint.server.domain import CheckStatus, Domain
from cardmint.server.domain.keys import STATUS_CODE
from cardmint.v1 import common_pb2, keys_pb2, keys_pb2_grpc

from ._convert import pack, unpack_packed
from .auth import current_principal

__all__ = ["KeyServicer"]

# The domain's status bytes are the proto's CodeStatus values, so they go on the wire as is.
if any(STATUS_CODE[s] != keys_pb2.CodeStatus.Value(f"CODE_STATUS_{s.name}") for s in CheckStatus):
    raise RuntimeError("domain STATUS_CODE and the proto's CodeStatus disagree")
DEFAULT_GENERATE_CHUNK = 65_536
MAX_GENERATE_CHUNK = 1 << 20


_MALFORMED = STATUS_CODE[CheckStatus.MALFORMED]


def _pack_codes(codes: npt.NDArray[np.bytes_], present: npt.NDArray[np.bool_]) -> common_pb2.PackedStrings:
    """Fixed-width codes, empty where ``present`` is False, as ``PackedStrings`` (cf. ``_convert.pack``)."""
    width = codes.dtype.itemsize
    if len(codes) and bool(present.all()):
        return common_pb2.PackedStrings(data=codes.tobytes(), width=width)
    data = codes[present].tobytes()
    lengths = np.where(present, width, 0).astype(np.uint32)
    return common_pb2.PackedStrings(data=data, lengths=lengths.tolist())


def _pack_suggestions(count: int, suggestions: dict[int, str]) -> common_pb2.PackedStrings:
    """``count`` strings, empty except at the rows of ``suggestions``; no suggestion at
    all is the empty message (the proto's contract), not ``count`` empty strings."""
    if not suggestions:
        return common_pb2.PackedStrings()
    lengths = np.zeros(count, dtype=np.uint32)
    parts = []
    for i in sorted(suggestions):
        encoded = suggestions[i].encode("utf-8")
        lengths[i] = len(encoded)
        parts.append(encoded)
    if count and len(suggestions) == count and len(set(lengths.tolist())) == 1:
        return common_pb2.PackedStrings(data=b"".join(parts), width=int(lengths[0]))
    return common_pb2.PackedStrings(data=b"".join(parts), lengths=lengths.tolist())


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
            checked = self._keys.check_packed(principal, unpack_packed(request.codes, "codes"), length=length)
            yield keys_pb2.CheckResponse(
                status=checked.status.tobytes(),
                normalized=_pack_codes(checked.normalized, checked.status != _MALFORMED),
                suggestions=_pack_suggestions(len(checked), checked.suggestions),
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
