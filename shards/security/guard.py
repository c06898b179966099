"""Authentication and authorisation of every RPC a server answers.

A Guard belongs to one listener. Its interceptor wraps every method handler of the server
(Tally's services, health checking, reflection), so no RPC runs before the guard has:

1. authenticated the caller: the TLS-verified client certificate (internal listeners, and
   client listeners in `certificate` mode) or the bearer token (client listeners in `token`
   mode), and checked that the credential is not revoked;
2. checked the method's action against the identity's roles (core.authority), and on the
   internal listener that the caller is a cluster identity.

The identity is then the RPC's `caller()`, and the servicers check the accounts a request
touches against its scope (`check_accounts`). Every denial is UNAUTHENTICATED (no valid
credential) or PERMISSION_DENIED (a valid credential without the permission), with a message
naming what is missing; it is counted (`tally_security_denials_total`) and written to the
security log (logger `tally.security`, its fields under "security" in JSON lines).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import grpc
from prometheus_client import CollectorRegistry, Counter

from core.authority import (
    Action,
    Denial,
    Identity,
    Role,
    action_of,
    check_accounts,
    check_action,
    check_posting,
    is_unscoped,
    targets_to_look_up,
)
from shards.security import pki
from shards.security.credentials import ServerSecurity
from shards.security.tokens import TokenError, TokenVerifier

log = logging.getLogger("tally.security")

CLIENT: Final = "client"
INTERNAL: Final = "internal"
_IDENTITY_CACHE_MAX: Final = 10_000
_current: contextvars.ContextVar[tuple[Identity, Guard, str]] = contextvars.ContextVar(
    "tally_caller"
)


class Unauthenticated(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def caller() -> Identity:
    """The identity of the RPC being served (set by the guard before any servicer runs)."""
    return _current.get()[0]


def denials_counter(registry: CollectorRegistry | None, prefix: str = "tally_") -> Counter | None:
    """The denials of a process's listeners, named with the process's metric prefix (a
    gateway's series are tally_gateway_*, so a sum over a cluster never counts one twice)."""
    if registry is None:
        return None
    return Counter(
        f"{prefix}security_denials",
        "RPCs refused by authentication (UNAUTHENTICATED) or authorisation (PERMISSION_DENIED)",
        ["listener", "method", "code", "reason"],
        registry=registry,
    )


class Guard:
    def __init__(
        self, security: ServerSecurity, listener: str, denials: Counter | None = None
    ) -> None:
        if listener not in (CLIENT, INTERNAL):
            raise ValueError(f"listener {listener!r}")
        self.security = security
        self.listener = listener
        self.uses_tokens = listener == CLIENT and security.client_auth == "token"
        self._tokens = TokenVerifier(security.token_keys)
        self._revocations = security.revocations()
        self._denials = denials
        self._by_certificate: dict[bytes, Identity] = {}
        self._by_token: dict[str, tuple[Identity, float]] = {}

    def server_credentials(self) -> grpc.ServerCredentials:
        return self.security.server_credentials(require_certificate=not self.uses_tokens)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Interceptor(self)

    # ---- authentication ----

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Identity:
        identity = (
            self._token_identity(context) if self.uses_tokens else self._cert_identity(context)
        )
        if self._revocations.is_revoked(identity.credential_id):
            raise Unauthenticated(
                "revoked", f"the {identity.via} {identity.credential_id} has been revoked"
            )
        return identity

    def _cert_identity(self, context: grpc.aio.ServicerContext[Any, Any]) -> Identity:
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise Unauthenticated("no-credential", "no client certificate was presented")
        pem = pems[0]
        identity = self._by_certificate.get(pem)
        if identity is None:
            try:
                identity = pki.identity_of(pki.load_certificate(pem, "the client certificate"))
            except pki.CertificateError as error:
                raise Unauthenticated("bad-certificate", str(error)) from None
            if len(self._by_certificate) >= _IDENTITY_CACHE_MAX:
                self._by_certificate.clear()
            self._by_certificate[pem] = identity
        return identity

    def _token_identity(self, context: grpc.aio.ServicerContext[Any, Any]) -> Identity:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode(errors="replace")
                scheme, _, rest = text.partition(" ")
                if scheme.lower() != "bearer" or not rest.strip():
                    raise Unauthenticated(
                        "bad-token", "the authorization metadata must be 'Bearer <token>'"
                    )
                token = rest.strip()
        if not token:
            raise Unauthenticated(
                "no-credential", "no bearer token (metadata 'authorization: Bearer <token>')"
            )
        cached = self._by_token.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        try:
            identity, expires = self._tokens.verify(token)
        except TokenError as error:
            reason = "expired" if "expired" in str(error) else "bad-token"
            raise Unauthenticated(reason, str(error)) from None
        if len(self._by_token) >= _IDENTITY_CACHE_MAX:
            self._by_token.clear()
        self._by_token[token] = (identity, expires)
        return identity

    # ---- authorisation ----

    def permit(self, identity: Identity, method: str, action: Action | None) -> Denial | None:
        if action is None:
            return Denial("method", f"{method} is not a method this server authorises")
        if self.listener == INTERNAL and Role.CLUSTER not in identity.roles:
            return Denial(
                "listener",
                f"the internal listener accepts only cluster identities (gateways, nodes); "
                f"{identity.describe()} is not one",
            )
        if self.listener == CLIENT and action is Action.INTERNAL:
            return Denial("listener", f"{method} is served only on the internal listener")
        return check_action(identity, action)

    async def admit(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> tuple[Identity, contextvars.Token[Any]]:
        """Authenticate and authorise; abort the RPC with the denial otherwise."""
        try:
            identity = self.authenticate(context)
        except Unauthenticated as error:
            self._record(
                context, method, grpc.StatusCode.UNAUTHENTICATED, error.reason, error.message, None
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, error.message)
            raise AssertionError("unreachable: abort raises") from None
        denial = self.permit(identity, method, action_of(method))
        if denial is not None:
            await self.deny(context, method, identity, denial)
        return identity, _current.set((identity, self, method))

    async def deny(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        identity: Identity,
        denial: Denial,
    ) -> None:
        self._record(
            context,
            method,
            grpc.StatusCode.PERMISSION_DENIED,
            denial.reason,
            denial.message,
            identity,
        )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, denial.message)

    def _record(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        identity: Identity | None,
    ) -> None:
        if self._denials is not None:
            self._denials.labels(self.listener, method, code.name, reason).inc()
        fields = {
            "event": "denied",
            "listener": self.listener,
            "method": method,
            "code": code.name,
            "reason": reason,
            "peer": context.peer(),
            "subject": identity.subject if identity else "",
            "credential": identity.credential_id if identity else "",
            "via": identity.via if identity else "",
        }
        log.warning("denied %s %s: %s", method, code.name, message, extra={"security": fields})


async def check_accounts_of_caller(
    context: grpc.aio.ServicerContext[Any, Any], action: Action, account_ids: Iterable[str]
) -> None:
    """Abort PERMISSION_DENIED (recorded by the RPC's guard) unless the caller may do `action`
    to every one of the accounts."""
    await refuse(context, check_accounts(caller(), action, account_ids))


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        # Each method's handler and its guarded twin, made once: a server's handlers are the
        # same objects call after call.
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = _guarded(handler, self._guard, method)
        self._guarded[method] = (handler, guarded)
        return guarded


def _guarded(handler: grpc.RpcMethodHandler, guard: Guard, method: str) -> grpc.RpcMethodHandler:
    """The same handler, its behaviour run only once the guard admits the caller."""
    if handler.unary_unary is not None:
        kind, behaviour = "unary_unary", handler.unary_unary
    elif handler.unary_stream is not None:
        kind, behaviour = "unary_stream", handler.unary_stream
    elif handler.stream_unary is not None:
        kind, behaviour = "stream_unary", handler.stream_unary
    else:
        kind, behaviour = "stream_stream", handler.stream_stream

    if inspect.isasyncgenfunction(behaviour):

        async def streaming(request: Any, context: Any) -> Any:
            await guard.admit(context, method)
            async for response in behaviour(request, context):
                yield response

        wrapped: Any = streaming
    else:

        async def call(request: Any, context: Any) -> Any:
            await guard.admit(context, method)
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result

        wrapped = call
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def refuse(context: grpc.aio.ServicerContext[Any, Any], denial: Denial | None) -> None:
    """Abort the RPC with `denial` (recorded by its guard); nothing if there is none."""
    if denial is not None:
        identity, guard, method = _current.get()
        await guard.deny(context, method, identity, denial)


async def check_posting_of_caller(
    context: grpc.aio.ServicerContext[Any, Any],
    transactions: Sequence[object],
    target_accounts: Callable[[list[str]], Awaitable[Mapping[str, Iterable[str]]]],
) -> None:
    """Abort PERMISSION_DENIED unless the caller may post every transaction of the batch
    (core.authority.check_posting); the accounts of the holds and originals the batch names
    are read with `target_accounts` only for a scoped poster."""
    identity = caller()
    if is_unscoped(identity, Action.POST):
        return
    wanted = targets_to_look_up(transactions)
    found = await target_accounts(wanted) if wanted else {}
    await refuse(context, check_posting(identity, transactions, found))
