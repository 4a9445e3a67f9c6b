"""The google.longrunning.Operations service: thin methods over the operations use case.

REST (through Envoy, the standard bindings): `GET /v1/operations/<id>`, `GET /v1/operations`,
`POST /v1/operations/<id>:cancel`, `DELETE /v1/operations/<id>`; WaitOperation over gRPC only.
The transcoder lets a query parameter or body field `name` override the one in the path: every
method acts (and checks who may see the operation) on the name it receives, never on the path.
"""

from __future__ import annotations

from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2

from service.edge.api import Context, Rpc, finish_call, handles_rpc, operations_route
from service.edge.operation_proto import operation_to_proto, render_operation
from service.infra.concurrency import current_lease
from service.usecases.operations import Operations

SERVICE_NAME = operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name


# googleapis-common-protos ships no types: its generated servicer base is Any to mypy.
class OperationsServicer(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    def __init__(self, operations: Operations) -> None:
        self._operations = operations

    @handles_rpc(finish=finish_call("GetOperation"), route=operations_route, request_type="")
    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Context, rpc: Rpc
    ) -> operations_pb2.Operation:
        found = await self._operations.get(request.name, rpc.call)
        return await render_operation(found.operation, found.items)

    @handles_rpc(finish=finish_call("ListOperations"), route=operations_route, request_type="")
    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Context, rpc: Rpc
    ) -> operations_pb2.ListOperationsResponse:
        operations, token = await self._operations.list_operations(
            request.name, request.filter, request.page_size, request.page_token, rpc.call
        )
        return operations_pb2.ListOperationsResponse(
            operations=[operation_to_proto(operation, None) for operation in operations], next_page_token=token
        )

    @handles_rpc(finish=finish_call("CancelOperation"), route=operations_route, request_type="")
    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Context, rpc: Rpc
    ) -> empty_pb2.Empty:
        await self._operations.cancel(request.name, rpc.call)
        return empty_pb2.Empty()

    @handles_rpc(finish=finish_call("DeleteOperation"), route=operations_route, request_type="")
    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Context, rpc: Rpc
    ) -> empty_pb2.Empty:
        await self._operations.delete(request.name, rpc.call)
        return empty_pb2.Empty()

    @handles_rpc(finish=finish_call("WaitOperation"), route=operations_route, request_type="")
    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Context, rpc: Rpc
    ) -> operations_pb2.Operation:
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else None
        if timeout is not None and timeout < 0:
            timeout = 0.0
        # A wait of up to an hour: one of the caller's long calls (service.infra.concurrency).
        lease = current_lease.get()
        if lease is not None:
            lease.long_call(0, self._operations.runtimes.current.config.client.limits)
        # The call's deadline (rpc.call.deadline) bounds the wait too.
        found = await self._operations.wait(request.name, timeout, rpc.call)
        return await render_operation(found.operation, found.items)
