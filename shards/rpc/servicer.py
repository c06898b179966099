"""What every tally.v1.Ledger servicer shares (a shard node's, the gateway's): aborting an RPC
with a status, the batch-size check, and handlers that parse their own requests (for the
node's tally.v1.Shard servicer too)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from core import limits
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb

if TYPE_CHECKING:
    from shards.rpc.metrics import RpcMetrics


# The size on the wire of the request the current RPC serves (0 outside one), set by the
# parsing handlers: what a node's writer counts against its queue's byte bound.
_request_size_bytes: contextvars.ContextVar[int] = contextvars.ContextVar(
    "request_size_bytes", default=0
)


def request_size_bytes() -> int | None:
    """The current RPC's request size on the wire; None outside an RPC's handler."""
    return _request_size_bytes.get() or None


class Unavailable(Exception):
    """Raised by a servicer for a dependency that is away (a shard with no endpoint yet):
    answered UNAVAILABLE with its message, which says to retry."""


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


async def check_batch_size(
    context: grpc.aio.ServicerContext[Any, Any], count: int, what: str
) -> None:
    if count == 0:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{what} is empty")
    if count > limits.batch_item_count_max:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{what} has {count} items; at most {limits.batch_item_count_max} per request",
        )


def ledger_handler(service: Any, metrics: RpcMetrics | None = None) -> grpc.GenericRpcHandler:
    """tally.v1.Ledger handlers of `service` (a LedgerServicer) that parse requests themselves,
    so a body that is not a valid message is INVALID_ARGUMENT (gRPC's own deserialisation
    would answer UNKNOWN); timed and counted (including unparseable requests) when given
    metrics."""
    return parsing_handler(service, pb, "Ledger", metrics)


def shard_handler(service: Any, metrics: RpcMetrics | None = None) -> grpc.GenericRpcHandler:
    """tally.v1.Shard handlers of `service` (a ShardServicer), as ledger_handler's."""
    return parsing_handler(service, spb, "Shard", metrics)


def parsing_handler(
    service: Any, module: Any, name: str, metrics: RpcMetrics | None = None
) -> grpc.GenericRpcHandler:
    """The handlers of service `name` of the generated `module` (see ledger_handler)."""
    descriptor = module.DESCRIPTOR.services_by_name[name]
    handlers = {}
    for method in descriptor.methods:
        request_type = getattr(module, method.input_type.name)
        response_type = getattr(module, method.output_type.name)
        if method.server_streaming:
            stream = _parsing_stream(getattr(service, method.name), request_type)
            if metrics is not None:
                stream = metrics.wrap_stream(method, stream)
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=None,
                response_serializer=stream_serializer(response_type),
            )
            continue
        handle = _parsing(getattr(service, method.name), request_type)
        if metrics is not None:
            handle = metrics.wrap(method, handle)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=None,
            response_serializer=response_type.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


def stream_serializer(response_type: Any) -> Callable[[Any], bytes]:
    """A stream's messages serialized, or sent as they are when already encoded (bytes): a
    message sent to many streams (a journal block) is encoded once, not once per stream."""
    serialize = response_type.SerializeToString

    def serialized(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serialize(message)

    return serialized


async def _parsed(
    body: bytes, request_type: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> Any:
    """The request of a body (INVALID_ARGUMENT if it is not one), its size noted for this
    RPC's own task and context."""
    try:
        request = request_type.FromString(body)
    except DecodeError as error:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {request_type.DESCRIPTOR.full_name}: {error}",
        )
    _request_size_bytes.set(len(body))
    return request


def _parsing(method: Any, request_type: Any) -> Any:
    async def handle(body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request = await _parsed(body, request_type, context)
        try:
            return await method(request, context)
        except Unavailable as error:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))

    return handle


def _parsing_stream(method: Any, request_type: Any) -> Any:
    """_parsing for a server-streaming method (an async generator)."""

    async def handle(body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request = await _parsed(body, request_type, context)
        try:
            async for response in method(request, context):
                yield response
        except Unavailable as error:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(error))

    return handle
