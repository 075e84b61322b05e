"""LotService: mint, export, void lots."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import numpy.typing as npt
from cardmint.server.domain import Domain, Lot, LotStatus
from cardmint.v1 import common_pb2, lot_pb2, lot_pb2_grpc

from ._convert import money, page_cursor, page_size, timestamp
from .auth import current_principal

MAX_PAGE = 200

__all__ = ["LotServicer", "lot_message"]

_STATUS = {
    LotStatus.MINTING: lot_pb2.LOT_STATUS_MINTING,
    LotStatus.COMPLETE: lot_pb2.LOT_STATUS_COMPLETE,
    LotStatus.VOID: lot_pb2.LOT_STATUS_VOID,
}


def lot_message(lot: Lot) -> lot_pb2.Lot:
    return lot_pb2.Lot(
        id=lot.id,
        product_id=lot.product_id,
        count=lot.count,
        face_value=money(lot.face_value, lot.currency),
        status=_STATUS[lot.status],
        serial_prefix=lot.serial_prefix,
        serial_start=lot.serial_start,
        created_at=timestamp(lot.created_at),
        created_by=lot.created_by,
        completed_at=timestamp(lot.completed_at),
        voided_at=timestamp(lot.voided_at),
        plaintext_exported=lot.plaintext_exported,
        expires_at=timestamp(lot.expires_at),
    )


def pack_array(strings: npt.NDArray[np.bytes_]) -> common_pb2.PackedStrings:
    """An ``S`` array as ``PackedStrings`` without a Python object per string: the array's
    buffer as is when every string fills the width (a lot's serials and codes do)."""
    n, width = len(strings), strings.dtype.itemsize
    raw = np.ascontiguousarray(strings).view(np.uint8).reshape(n, width)
    if n and width and raw[:, -1].all():
        return common_pb2.PackedStrings(data=raw.tobytes(), width=width)
    # Shorter strings are NUL-padded in an S array (and tolist() strips the padding).
    items = strings.tolist()
    return common_pb2.PackedStrings(data=b"".join(items), lengths=[len(b) for b in items])


class LotServicer(lot_pb2_grpc.LotServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._lots = domain.lots

    def CreateLot(  # noqa: N802 - grpc's generated method names
        self, request: lot_pb2.CreateLotRequest, context: grpc.ServicerContext
    ) -> Iterator[lot_pb2.CreateLotProgress]:
        principal = current_principal()
        # The domain reports progress through a callback on the minting thread, and a
        # generator cannot yield from inside a callback: mint on a worker thread and relay
        # its progress through a queue. If the caller goes away the lot is still finished
        # (all or nothing); the worker is not a daemon, so shutdown waits for it.
        events: queue.Queue[tuple[int, int] | Lot | Exception] = queue.Queue()

        def mint() -> None:
            try:
                lot = self._lots.create_lot(
                    principal,
                    sku=request.sku,
                    count=request.count,
                    face_value=request.face_value_minor_units,
                    progress=lambda done, total: events.put((done, total)),
                    request_id=request.request_id or None,
                )
            except Exception as exc:  # handed to the handler thread, mapped there
                events.put(exc)
            else:
                events.put(lot)

        threading.Thread(target=mint, name="cardmint-create-lot").start()
        while True:
            event = events.get()
            if isinstance(event, Exception):
                raise event
            if isinstance(event, Lot):
                yield lot_pb2.CreateLotProgress(done=event.count, total=event.count, lot=lot_message(event))
                return
            yield lot_pb2.CreateLotProgress(done=event[0], total=event[1])

    def GetLot(self, request: lot_pb2.GetLotRequest, context: grpc.ServicerContext) -> lot_pb2.Lot:  # noqa: N802
        return lot_message(self._lots.get_lot(current_principal(), request.lot_id))

    def StreamLot(  # noqa: N802 - grpc's generated method names
        self, request: lot_pb2.StreamLotRequest, context: grpc.ServicerContext
    ) -> Iterator[lot_pb2.LotChunk]:
        for chunk in self._lots.stream_lot(current_principal(), request.lot_id):
            yield lot_pb2.LotChunk(serials=pack_array(chunk.serial_array), codes=pack_array(chunk.code_array))

    def VoidLot(self, request: lot_pb2.VoidLotRequest, context: grpc.ServicerContext) -> lot_pb2.Lot:  # noqa: N802
        return lot_message(self._lots.void_lot(current_principal(), request.lot_id))

    def ListLots(  # noqa: N802 - grpc's generated method names
        self, request: lot_pb2.ListLotsRequest, context: grpc.ServicerContext
    ) -> lot_pb2.ListLotsResponse:
        size = page_size(request.page, MAX_PAGE)
        # One more than asked tells whether another page exists without a second query.
        found = self._lots.list_lots(
            current_principal(),
            sku=request.sku or None,
            after_id=page_cursor(request.page) or 0,
            limit=size + 1,
        )
        page = found[:size]
        more = len(found) > size
        return lot_pb2.ListLotsResponse(
            lots=[lot_message(lot) for lot in page],
            page=common_pb2.PageResponse(next_page_token=str(page[-1].id) if more else ""),
        )
