"""KeyService.Check on the wire: how the array answer is framed in ``PackedStrings``."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from cardmint.client import Client
from cardmint.v1 import common_pb2, keys_pb2, keys_pb2_grpc

from .test_services import _lot, _typo

Connect = Callable[..., Client]


def _split(packed: common_pb2.PackedStrings) -> list[bytes]:
    if packed.width:
        assert not packed.lengths
        return [packed.data[i : i + packed.width] for i in range(0, len(packed.data), packed.width)]
    out, at = [], 0
    for n in packed.lengths:
        out.append(packed.data[at : at + n])
        at += n
    assert at == len(packed.data)
    return out


def test_check_answers_frame_like_the_requests(connect: Connect, channel: grpc.Channel) -> None:
    admin = connect("admin")
    _, rows = _lot(admin, n=5)
    codes = [c.replace("-", "").encode() for _, c in rows]
    check = keys_pb2_grpc.KeyServiceStub(channel).Check

    def ask(packed: common_pb2.PackedStrings) -> keys_pb2.CheckResponse:
        (answer,) = check(iter([keys_pb2.CheckRequest(codes=packed)]), metadata=admin._metadata, timeout=10)
        return answer

    # every code well formed: one fixed width, no length list; no suggestion at all
    answer = ask(common_pb2.PackedStrings(data=b"".join(codes), width=16))
    assert answer.status == bytes([keys_pb2.CODE_STATUS_OK]) * 5
    assert (answer.normalized.width, answer.normalized.data) == (16, b"".join(codes))
    # no suggestion in the chunk: the empty message, not five empty strings
    assert answer.suggestions == common_pb2.PackedStrings()

    # a malformed row makes a length list, with an empty string in its place
    typo = _typo(rows[2][1]).encode()
    raw = [codes[0].lower(), b"", typo, b"nope"]
    answer = ask(common_pb2.PackedStrings(data=b"".join(raw), lengths=[len(r) for r in raw]))
    assert list(answer.status) == [
        keys_pb2.CODE_STATUS_OK,
        keys_pb2.CODE_STATUS_MALFORMED,
        keys_pb2.CODE_STATUS_CORRECTED,
        keys_pb2.CODE_STATUS_MALFORMED,
    ]
    assert _split(answer.normalized) == [codes[0], b"", typo.replace(b"-", b""), b""]
    assert _split(answer.suggestions) == [b"", b"", rows[2][1].encode(), b""]

    # every row corrected: the suggestions share one width
    answer = ask(common_pb2.PackedStrings(data=typo, width=len(typo)))
    assert (answer.suggestions.width, answer.suggestions.data) == (19, rows[2][1].encode())

    # an empty chunk gets an empty answer
    answer = ask(common_pb2.PackedStrings())
    assert answer.status == b"" and _split(answer.normalized) == [] and _split(answer.suggestions) == []
