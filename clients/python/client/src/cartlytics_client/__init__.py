"""cartlytics-client: the Python SDK of cartlytics (gRPC, sync and asyncio).

    from cartlytics_client import Client

    with Client(api_key=key, target="127.0.0.1:50051") as client:
        client.analytics.track("product_view", {"productId": "prod_abc123", "userId": "u_1"})
        sales = client.analytics.get_sales(period="30d")
        rows = client.analytics.query(metrics=["revenue"], filters={"period": "7d"})

docs/clients.md is the behaviour contract it shares with the Go and JavaScript SDKs.
"""

from ._aio import AsyncAnalytics, AsyncClient
from ._events import MAX_EVENT_BYTES, AcceptedEvent, Event, TrackResult, new_event_id
from ._sync import Analytics, BinaryWriter, Client
from ._version import LIBRARY_NAME, __version__
from .errors import (
    CartlyticsError,
    ClientClosed,
    EventTooLarge,
    FieldViolation,
    QueueFull,
)

__all__ = [
    "LIBRARY_NAME",
    "MAX_EVENT_BYTES",
    "AcceptedEvent",
    "Analytics",
    "AsyncAnalytics",
    "AsyncClient",
    "BinaryWriter",
    "CartlyticsError",
    "Client",
    "ClientClosed",
    "Event",
    "EventTooLarge",
    "FieldViolation",
    "QueueFull",
    "TrackResult",
    "__version__",
    "new_event_id",
]
