"""EventService: the outbox feed for notifiers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
from cardmint.server.domain import Domain
from cardmint.v1 import event_pb2, event_pb2_grpc

from ._convert import timestamp
from .auth import current_principal

__all__ = ["EventServicer"]


class EventServicer(event_pb2_grpc.EventServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._events = domain.events

    def Subscribe(  # noqa: N802 - grpc's generated method names
        self, request: event_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[event_pb2.Event]:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        for e in self._events.subscribe(
            current_principal(),
            request.after_id,
            kinds=list(request.kinds),
            active=context.is_active,
            deadline=deadline,
            until=request.until_id,
        ):
            yield event_pb2.Event(
                id=e.id,
                at=timestamp(e.at),
                kind=e.kind,
                subject=e.subject,
                detail_json=json.dumps(e.detail, sort_keys=True),
            )

    def GetHead(  # noqa: N802 - grpc's generated method names
        self, request: event_pb2.GetHeadRequest, context: grpc.ServicerContext
    ) -> event_pb2.GetHeadResponse:
        return event_pb2.GetHeadResponse(
            head_id=self._events.head(current_principal()), kinds=self._events.kinds()
        )
