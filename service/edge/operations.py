"""The google.longrunning.Operations service: thin methods over the operations use case.

REST (through Envoy, the standard bindings): `GET /v1/operations/<id>`, `GET /v1/operations`,
`POST /v1/operations/<id>:cancel`, `DELETE /v1/operations/<id>`; WaitOperation over gRPC only.
The transcoder lets a query parameter or body field `name` override the one in the path: every
method acts (and checks who may see the operation) on the name it receives, never on the path.
"""

from __future__ import annotations

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2

from service.edge.api import Call, finish_call, handles_rpc, operations_route, time_budget
from service.edge.operation_proto import operation_to_proto
from service.usecases.operations import Operations

SERVICE_NAME = operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    def __init__(self, operations: Operations) -> None:
        self._operations = operations

    @handles_rpc(finish=finish_call("GetOperation"), route=operations_route, request_type="")
    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> operations_pb2.Operation:
        found = await self._operations.get(request.name, call.context.headers, call.context)
        return operation_to_proto(found.operation, found.items)

    @handles_rpc(finish=finish_call("ListOperations"), route=operations_route, request_type="")
    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> operations_pb2.ListOperationsResponse:
        operations, token = await self._operations.list_operations(
            request.name, request.filter, request.page_size, request.page_token, call.context.headers, call.context
        )
        return operations_pb2.ListOperationsResponse(
            operations=[operation_to_proto(operation, None) for operation in operations], next_page_token=token
        )

    @handles_rpc(finish=finish_call("CancelOperation"), route=operations_route, request_type="")
    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> empty_pb2.Empty:
        await self._operations.cancel(request.name, call.context.headers, call.context)
        return empty_pb2.Empty()

    @handles_rpc(finish=finish_call("DeleteOperation"), route=operations_route, request_type="")
    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> empty_pb2.Empty:
        await self._operations.delete(request.name, call.context.headers, call.context)
        return empty_pb2.Empty()

    @handles_rpc(finish=finish_call("WaitOperation"), route=operations_route, request_type="")
    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> operations_pb2.Operation:
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else None
        if timeout is not None and timeout < 0:
            timeout = 0.0
        budget = time_budget(context.time_remaining(), call.context.headers)
        found = await self._operations.wait(request.name, timeout, budget, call.context.headers, call.context)
        return operation_to_proto(found.operation, found.items)
