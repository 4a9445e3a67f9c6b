"""Python client for batchgate (`batchgate.v1.BatchService`) and the `batchgate` command.

    from batchgate_client import BatchgateClient, NotFound

    with BatchgateClient("127.0.0.1:50051", vk=os.environ["BATCHGATE_VK"]) as client:
        batch = client.cancel("batch_abc123", "openai", wait_seconds=60)
        for event in client.cancel_many([("batch_1", "openai"), ("msgbatch_2", "anthropic")]):
            print(event.index, event.status)

The package does not import the service: its gRPC stubs are generated from protos/ into `_proto`.
"""

from batchgate_client.client import (
    DEFAULT_TARGET,
    TERMINAL_STATUSES,
    AsyncBatchgateClient,
    BatchCancelResponse,
    BatchgateClient,
    BatchRef,
    CancelEvent,
    HealthResponse,
    batch_to_dict,
)
from batchgate_client.errors import (
    BatchgateError,
    Cancelled,
    Conflict,
    ConnectionFailed,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from batchgate_client.retry import RetryPolicy

__all__ = [
    "DEFAULT_TARGET",
    "TERMINAL_STATUSES",
    "AsyncBatchgateClient",
    "BatchCancelResponse",
    "BatchRef",
    "BatchgateClient",
    "BatchgateError",
    "CancelEvent",
    "Cancelled",
    "Conflict",
    "ConnectionFailed",
    "DeadlineExceeded",
    "HealthResponse",
    "InternalError",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "batch_to_dict",
]
