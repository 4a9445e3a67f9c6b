"""Python client for batchgate (`batchgate.v1.BatchService`) and the `batchgate` command.

    from batchgate_client import BatchgateClient, NotFound

    with BatchgateClient("127.0.0.1:50051", vk=os.environ["BATCHGATE_VK"]) as client:
        batch = client.cancel("batch_abc123", "openai", wait_seconds=60)
        with client.cancel_many([("batch_1", "openai"), ("msgbatch_2", "anthropic")]) as events:
            for event in events:
                print(event.index, event.status)

Cancel by selector (a kill switch) is a long-running operation:

        op = client.cancel_matching(providers=["openai"], metadata={"team": "ml"}, validate_only=True)
        op = client.wait_operation(op.name, timeout=60)
        for batch in op.result.batches if op.result else ():
            print(batch.provider, batch.id, batch.outcome)

Results are typed (`models`: `Batch`, `CancelEvent`, `Health`, `Operation`), failures are `BatchgateError`
subclasses (`errors`), retries are data (`RetryPolicy`). The package does not import the service:
its gRPC stubs are generated from protos/ into `_proto`.
"""

from batchgate_client.client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    MAX_ITEMS_PER_CALL,
    AsyncBatchgateClient,
    AsyncCancelStream,
    BatchCancelResponse,
    BatchgateClient,
    CancelStream,
    HealthResponse,
    ItemLike,
    TimeLike,
    batch_to_dict,
)
from batchgate_client.errors import (
    BatchgateError,
    Cancelled,
    ClientClosed,
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
from batchgate_client.models import (
    TERMINAL_STATUSES,
    Batch,
    BatchOutcome,
    BatchRef,
    BatchSelector,
    BatchStatus,
    CancelEvent,
    CancelMatchingMetadata,
    CancelMatchingResult,
    CircuitState,
    ConfigState,
    Health,
    HealthStatus,
    MatchedBatch,
    Operation,
    OperationError,
    OperationsPage,
    OperationState,
    ProviderHealth,
    RateLimitStore,
    RequestCounts,
    SelectorStatus,
)
from batchgate_client.retry import RetryPolicy

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_ITEMS_PER_CALL",
    "TERMINAL_STATUSES",
    "AsyncBatchgateClient",
    "AsyncCancelStream",
    "Batch",
    "BatchCancelResponse",
    "BatchOutcome",
    "BatchRef",
    "BatchSelector",
    "BatchStatus",
    "BatchgateClient",
    "BatchgateError",
    "CancelEvent",
    "CancelMatchingMetadata",
    "CancelMatchingResult",
    "CancelStream",
    "Cancelled",
    "CircuitState",
    "ClientClosed",
    "ConfigState",
    "Conflict",
    "ConnectionFailed",
    "DeadlineExceeded",
    "Health",
    "HealthResponse",
    "HealthStatus",
    "InternalError",
    "InvalidRequest",
    "ItemLike",
    "MatchedBatch",
    "NotFound",
    "Operation",
    "OperationError",
    "OperationState",
    "OperationsPage",
    "PermissionDenied",
    "ProviderHealth",
    "RateLimitStore",
    "RateLimited",
    "RequestCounts",
    "RetryPolicy",
    "SelectorStatus",
    "TimeLike",
    "Unauthenticated",
    "Unavailable",
    "batch_to_dict",
]
