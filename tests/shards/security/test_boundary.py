"""The security boundary as a matrix: every RPC of every service, on every listener, against
every kind of caller, is allowed or refused with the exact denial.

Servers are real (an in-process node with its client and internal listeners, a node whose
client listener takes bearer tokens, an audit server), on loopback, with the tests' CA. The
expected outcome of each cell comes from the table below, written from the issue's roles and
not from core.authority, so a change of policy in the code fails here.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core.authority import Role
from shards.audit.server import AuditServer, AuditServiceConfig
from shards.security import directory, pki
from shards.security.credentials import ClientSecurity, aio_channel
from tally.v1 import audit_pb2 as apb
from tally.v1 import ledger_pb2 as pb
from tally.v1 import shard_pb2 as spb
from tests.support import security
from tests.support.helpers import NodeHandle, account, start_node, transfer

LOAN_SCOPE = ("cust-*/loan-*", "@funding/loans")
IN_SCOPE = "cust-1/loan-1"
OUT_OF_SCOPE = "cust-1/deposit"
FUNDING = "@funding/loans"
SEEDED_TRANSFER = "seed-disbursement"
SEEDED_OUTSIDE = "seed-deposit"

ALLOW = "allow"


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[Role]
    accounts: tuple[str, ...] = ()


CALLERS = (
    Caller("superuser", frozenset({Role.ADMIN, Role.POSTER, Role.READER, Role.AUDITOR}), ("**",)),
    Caller("poster", frozenset({Role.POSTER}), LOAN_SCOPE),
    Caller("reader", frozenset({Role.READER}), LOAN_SCOPE),
    Caller("admin", frozenset({Role.ADMIN}), LOAN_SCOPE),
    Caller("auditor", frozenset({Role.AUDITOR})),
    Caller("cluster", frozenset({Role.CLUSTER})),
    Caller("monitor", frozenset({Role.MONITOR}), LOAN_SCOPE),
    Caller("nobody", frozenset()),
)

# Which callers each client-facing method admits (the issue: poster posts, reader reads,
# admin creates/closes accounts and reads them, auditor audits and reads everything; a cluster
# identity is a gateway acting for callers it has authorised).
LEDGER_ALLOWED = {
    "CreateAccounts": {"superuser", "admin", "cluster"},
    "CloseAccounts": {"superuser", "admin", "cluster"},
    "PostTransactions": {"superuser", "poster", "cluster"},
    "GetAccounts": {"superuser", "reader", "admin", "auditor", "cluster"},
    "GetTransactions": {"superuser", "reader", "admin", "auditor", "cluster"},
    "ListPostings": {"superuser", "reader", "admin", "auditor", "cluster"},
    "BalanceAt": {"superuser", "reader", "admin", "auditor", "cluster"},
    "StreamJournal": {"superuser", "auditor", "cluster", "monitor"},
}
# Server-streaming methods (called as streams).
LEDGER_STREAMS = {"StreamJournal"}
AUDIT_ALLOWED = {"superuser", "auditor"}
# Callers whose scope limits them, and which role each lacks for the methods it is denied.
SCOPED = {"poster", "reader", "admin"}


def ledger_requests(account_id: str, transaction_id: str) -> dict[str, Any]:
    return {
        "CreateAccounts": pb.CreateAccountsRequest(
            accounts=[account(account_id.replace("1", "9", 1))]
        ),
        "CloseAccounts": pb.CloseAccountsRequest(
            accounts=[pb.CloseAccount(account_id=account_id.replace("1", "2", 1))]
        ),
        "PostTransactions": pb.PostTransactionsRequest(
            transactions=[transfer(f"matrix-{uuid.uuid4().hex[:12]}", account_id, FUNDING, 1)]
        ),
        "GetAccounts": pb.GetAccountsRequest(ids=[account_id]),
        "GetTransactions": pb.GetTransactionsRequest(ids=[transaction_id]),
        "ListPostings": pb.ListPostingsRequest(account_id=account_id),
        "BalanceAt": pb.BalanceAtRequest(account_id=account_id, at_ns=1),
        "StreamJournal": pb.StreamJournalRequest(),
    }


LEDGER_RESPONSES = {
    "CreateAccounts": pb.CreateAccountsResponse,
    "CloseAccounts": pb.CloseAccountsResponse,
    "PostTransactions": pb.PostTransactionsResponse,
    "GetAccounts": pb.GetAccountsResponse,
    "GetTransactions": pb.GetTransactionsResponse,
    "ListPostings": pb.ListPostingsResponse,
    "BalanceAt": pb.BalanceAtResponse,
    "StreamJournal": pb.JournalBlock,
}
SHARD_METHODS = {
    name: (getattr(spb, method.input_type.name), getattr(spb, method.output_type.name))
    for name, method in spb.DESCRIPTOR.services_by_name["Shard"].methods_by_name.items()
}
AUDIT_METHODS = {
    "RunAudit": (apb.RunAuditRequest(), apb.AuditReport, False),
    "StreamAudit": (apb.RunAuditRequest(), apb.AuditEvent, True),
    "VerifyChain": (apb.VerifyChainRequest(), apb.VerifyChainResponse, False),
    "TrialBalance": (apb.TrialBalanceRequest(), apb.TrialBalanceResponse, False),
}


async def call(
    channel: grpc.aio.Channel, method: str, request: Any, response_type: Any, stream: bool = False
) -> grpc.StatusCode:
    """The status an RPC ends with (OK, or the code it failed with)."""
    code, _ = await call_detailed(channel, method, request, response_type, stream)
    return code


async def call_detailed(
    channel: grpc.aio.Channel, method: str, request: Any, response_type: Any, stream: bool = False
) -> tuple[grpc.StatusCode, str]:
    try:
        if stream:
            streaming = channel.unary_stream(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            async for _ in streaming(request, timeout=30):
                pass
        else:
            unary = channel.unary_unary(
                method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            await unary(request, timeout=30)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


DENIALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def credentials_of(caller: Caller) -> ClientSecurity:
    return security.identity(caller.roles, caller.accounts, name=f"matrix-{caller.name}")


def token_of(caller: Caller) -> ClientSecurity:
    return security.token(caller.roles, caller.accounts, name=f"matrix-token-{caller.name}")


async def seed(target: str, presented: ClientSecurity | None = None) -> None:
    async with aio_channel(target, presented or security.admin()) as channel:
        stub_call = channel.unary_unary(
            "/tally.v1.Ledger/CreateAccounts",
            request_serializer=pb.CreateAccountsRequest.SerializeToString,
            response_deserializer=pb.CreateAccountsResponse.FromString,
        )
        ids = [IN_SCOPE, OUT_OF_SCOPE, FUNDING, "cust-2/loan-2", "cust-2/deposit"]
        response = await stub_call(pb.CreateAccountsRequest(accounts=[account(i) for i in ids]))
        assert [r.code for r in response.results] == [pb.RESULT_CODE_CREATED] * len(ids)
        post = channel.unary_unary(
            "/tally.v1.Ledger/PostTransactions",
            request_serializer=pb.PostTransactionsRequest.SerializeToString,
            response_deserializer=pb.PostTransactionsResponse.FromString,
        )
        seeded = await post(
            pb.PostTransactionsRequest(
                transactions=[
                    transfer(SEEDED_TRANSFER, IN_SCOPE, FUNDING, 500),
                    transfer(SEEDED_OUTSIDE, OUT_OF_SCOPE, FUNDING, 50),
                ]
            )
        )
        assert [r.code for r in seeded.results] == [pb.RESULT_CODE_CREATED] * 2


@pytest.fixture
async def node(dsn: str) -> AsyncIterator[NodeHandle]:
    """A node with its client listener (client certificates) and its internal listener."""
    handle = await start_node(dsn, internal_listen="127.0.0.1:0")
    try:
        await seed(handle.target)
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def token_node(pg: Any) -> AsyncIterator[NodeHandle]:
    """A node whose client listener authenticates bearer tokens."""
    name = f"tokens_{uuid.uuid4().hex[:8]}"
    await pg.create_database_async(name)
    handle = await start_node(pg.dsn(name), security=security.server_security("token"))
    try:
        superuser = security.token({Role.ADMIN, Role.POSTER, Role.READER}, ("**",))
        await seed(handle.target, superuser)
        yield handle
    finally:
        await handle.stop()


# ---- the client listener: every Ledger method x every caller ----


async def test_client_listener_ledger_matrix(node: NodeHandle) -> None:
    for caller in CALLERS:
        await client_ledger_row(node, caller)


async def client_ledger_row(node: NodeHandle, caller: Caller) -> None:
    async with aio_channel(node.target, credentials_of(caller)) as channel:
        await ledger_row(channel, caller)


async def ledger_row(channel: grpc.aio.Channel, caller: Caller) -> None:
    """Every Ledger method on accounts in scope: allowed, or refused for the role missing."""
    for method, request in ledger_requests(IN_SCOPE, SEEDED_TRANSFER).items():
        code, details = await call_detailed(
            channel,
            f"/tally.v1.Ledger/{method}",
            request,
            LEDGER_RESPONSES[method],
            method in LEDGER_STREAMS,
        )
        if caller.name in LEDGER_ALLOWED[method]:
            assert code not in DENIALS, (method, caller.name, code, details)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, caller.name, code)
            assert "needs the role" in details, details


async def test_client_listener_scope_matrix(node: NodeHandle) -> None:
    """A scoped caller, on accounts outside its patterns: refused, naming the account."""
    for caller in CALLERS:
        if caller.name in SCOPED:
            await client_scope_row(node, caller)


async def client_scope_row(node: NodeHandle, caller: Caller) -> None:
    requests = ledger_requests(OUT_OF_SCOPE, SEEDED_OUTSIDE)
    async with aio_channel(node.target, credentials_of(caller)) as channel:
        for method, request in requests.items():
            if caller.name not in LEDGER_ALLOWED[method]:
                continue  # refused for its role already (the matrix above)
            code, details = await call_detailed(
                channel,
                f"/tally.v1.Ledger/{method}",
                request,
                LEDGER_RESPONSES[method],
                method in LEDGER_STREAMS,
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, caller.name, code)
            assert "outside the scope" in details and "cust-" in details, details


async def test_client_listener_probes_and_no_shard(node: NodeHandle) -> None:
    """Health and reflection answer any authenticated caller; tally.v1.Shard is not served."""
    for caller in CALLERS:
        await probe_row(node, caller)


async def probe_row(node: NodeHandle, caller: Caller) -> None:
    async with aio_channel(node.target, credentials_of(caller)) as channel:
        code = await call(
            channel,
            "/grpc.health.v1.Health/Check",
            health_pb2.HealthCheckRequest(),
            health_pb2.HealthCheckResponse,
        )
        assert code == grpc.StatusCode.OK
        services = await listed_services(channel)
        assert "tally.v1.Ledger" in services and "tally.v1.Shard" not in services
        for method, (request_type, response_type) in SHARD_METHODS.items():
            code = await call(channel, f"/tally.v1.Shard/{method}", request_type(), response_type)
            assert code == grpc.StatusCode.UNIMPLEMENTED, (method, caller.name, code)


async def listed_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=10):
        return [s.name for s in response.list_services_response.service]
    return []


# ---- the internal listener: cluster identities only ----


async def test_internal_listener_matrix(node: NodeHandle) -> None:
    for caller in CALLERS:
        await internal_row(node, caller)


async def internal_row(node: NodeHandle, caller: Caller) -> None:
    async with aio_channel(node.internal_target, credentials_of(caller)) as channel:
        shard_calls = {
            f"/tally.v1.Shard/{m}": (request_type(), response_type)
            for m, (request_type, response_type) in SHARD_METHODS.items()
        }
        ledger_calls = {
            f"/tally.v1.Ledger/{m}": (r, LEDGER_RESPONSES[m])
            for m, r in ledger_requests(IN_SCOPE, SEEDED_TRANSFER).items()
        }
        probes = {
            "/grpc.health.v1.Health/Check": (
                health_pb2.HealthCheckRequest(),
                health_pb2.HealthCheckResponse,
            )
        }
        for method, (request, response_type) in {**shard_calls, **ledger_calls, **probes}.items():
            stream = method.removeprefix("/tally.v1.Ledger/") in LEDGER_STREAMS
            code, details = await call_detailed(channel, method, request, response_type, stream)
            if caller.name == "cluster":
                assert code not in (*DENIALS, grpc.StatusCode.UNIMPLEMENTED), (method, code)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (method, caller.name, code)
                assert "only cluster identities" in details, details
        if caller.name == "cluster":
            assert "tally.v1.Shard" in await listed_services(channel)


# ---- credentials that prove nothing ----


def foreign_identity() -> ClientSecurity:
    """An admin certificate from a CA the servers do not trust."""
    other = pki.Authority.create("not the cluster's CA")
    certificate, key = other.issue("intruder", {Role.ADMIN, Role.POSTER}, ("**",))
    return ClientSecurity(security.admin().ca, pki.certificate_pem(certificate), pki.key_pem(key))


def expired_identity() -> ClientSecurity:
    authority = directory.load_authority(security.root())
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    certificate, key = authority.issue(
        "expired",
        {Role.ADMIN, Role.POSTER},
        ("**",),
        valid_for=datetime.timedelta(days=1),
        not_before=long_ago,
    )
    return ClientSecurity(security.admin().ca, pki.certificate_pem(certificate), pki.key_pem(key))


async def test_no_valid_certificate_gets_nothing(node: NodeHandle) -> None:
    """The TLS handshake itself refuses: the RPC fails UNAVAILABLE and nothing is applied."""
    for presented in ("plain", "tls-without-certificate", "foreign-ca", "expired-certificate"):
        for listener in ("client", "internal"):
            await refused_before_any_rpc(node, presented, listener)


async def refused_before_any_rpc(node: NodeHandle, presented: str, listener: str) -> None:
    target = node.target if listener == "client" else node.internal_target
    if presented == "plain":
        channel = grpc.aio.insecure_channel(target)
    elif presented == "tls-without-certificate":
        channel = aio_channel(target, ClientSecurity(security.admin().ca))
    elif presented == "foreign-ca":
        channel = aio_channel(target, foreign_identity())
    else:
        channel = aio_channel(target, expired_identity())
    request = ledger_requests(IN_SCOPE, SEEDED_TRANSFER)["PostTransactions"]
    async with channel:
        code = await call(
            channel, "/tally.v1.Ledger/PostTransactions", request, pb.PostTransactionsResponse
        )
    assert code == grpc.StatusCode.UNAVAILABLE, (presented, listener, code)
    posted_id = request.transactions[0].id
    async with security.channel(node.target) as admin_channel:
        lookup = await admin_channel.unary_unary(
            "/tally.v1.Ledger/GetTransactions",
            request_serializer=pb.GetTransactionsRequest.SerializeToString,
            response_deserializer=pb.GetTransactionsResponse.FromString,
        )(pb.GetTransactionsRequest(ids=[posted_id]))
    assert lookup.results[0].code == pb.RESULT_CODE_TRANSACTION_NOT_FOUND


async def first_refusal(
    channel: grpc.aio.Channel, request: pb.GetAccountsRequest
) -> tuple[grpc.StatusCode, str]:
    """GetAccounts again until it is refused (servers re-read the revocation list at most every
    second), for at most 4 s; the last status and details."""
    code, details = grpc.StatusCode.OK, ""
    for _ in range(40):
        code, details = await call_detailed(
            channel, "/tally.v1.Ledger/GetAccounts", request, pb.GetAccountsResponse
        )
        if code != grpc.StatusCode.OK:
            break
        await asyncio.sleep(0.1)
    return code, details


async def test_revoked_certificate_is_unauthenticated(node: NodeHandle) -> None:
    root = security.root()
    out = root / "issued" / f"revoked-{uuid.uuid4().hex[:6]}"
    certificate, key, serial = directory.issue_certificate(
        root, out.name, {Role.POSTER, Role.READER}, ("**",), out=out
    )
    revoked = ClientSecurity(security.admin().ca, certificate.read_bytes(), key.read_bytes())
    request = pb.GetAccountsRequest(ids=[IN_SCOPE])
    async with aio_channel(node.target, revoked) as channel:
        assert (
            await call(channel, "/tally.v1.Ledger/GetAccounts", request, pb.GetAccountsResponse)
            == grpc.StatusCode.OK
        )
        directory.revoke(root, serial, "test")
        code, details = await first_refusal(channel, request)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert serial in details and "revoked" in details


# ---- bearer tokens ----


def forged_tokens() -> dict[str, str]:
    """Tokens that must not authenticate anyone, each with the word its refusal names."""
    import base64
    import json

    import jwt

    from core import signing
    from shards.security import tokens

    good = security.token({Role.POSTER}, ("**",)).token
    head, body, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["accounts"] = ["**"]
    claims["roles"] = ["admin", "poster", "auditor"]
    tampered_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    trusted_kid = jwt.get_unverified_header(good)["kid"]
    stranger = signing.generate()
    unsigned = jwt.encode(
        {**claims, "sub": "nobody"}, key=None, algorithm="none", headers={"kid": trusted_kid}
    )
    expired, _ = tokens.issue(
        signing.load_private(directory.Paths(security.root()).token_key.read_bytes(), "token key"),
        "late",
        {Role.POSTER},
        ("**",),
        valid_for=datetime.timedelta(seconds=1),
        now=1_000_000,
    )
    other_key_same_kid = jwt.encode(
        claims, stranger, algorithm="EdDSA", headers={"kid": trusted_kid}
    )
    other_key, _ = tokens.issue(stranger, "stranger", {Role.POSTER}, ("**",))
    return {
        "tampered": f"{head}.{tampered_body}.{signature}",
        "alg-none": unsigned,
        "expired": expired,
        "forged-signature": other_key_same_kid,
        "unknown-key": other_key,
        "garbage": "not-a-token",
    }


async def test_token_listener_refuses_bad_tokens(token_node: NodeHandle) -> None:
    for kind in ("none", "tampered", "alg-none", "expired", "forged-signature", "unknown-key"):
        await bad_token_row(token_node, kind)
    await bad_token_row(token_node, "garbage")


async def bad_token_row(token_node: NodeHandle, kind: str) -> None:
    presented = (
        ClientSecurity(security.admin().ca)
        if kind == "none"
        else ClientSecurity(security.admin().ca, token=forged_tokens()[kind])
    )
    expected_words = {
        "none": "no bearer token",
        "tampered": "signature",
        "alg-none": "",
        "expired": "expired",
        "forged-signature": "signature",
        "unknown-key": "not one this server trusts",
        "garbage": "not a JWT",
    }
    async with aio_channel(token_node.target, presented) as channel:
        for method, request in ledger_requests(IN_SCOPE, SEEDED_TRANSFER).items():
            code, details = await call_detailed(
                channel, f"/tally.v1.Ledger/{method}", request, LEDGER_RESPONSES[method]
            )
            assert code == grpc.StatusCode.UNAUTHENTICATED, (kind, method, code, details)
            assert expected_words[kind] in details, (kind, details)


async def test_token_listener_ledger_matrix(token_node: NodeHandle) -> None:
    """The same permissions by token as by certificate."""
    for caller in CALLERS:
        await token_row(token_node, caller)


async def token_row(token_node: NodeHandle, caller: Caller) -> None:
    async with aio_channel(token_node.target, token_of(caller)) as channel:
        await ledger_row(channel, caller)
        if caller.name in SCOPED:
            for method, request in ledger_requests(OUT_OF_SCOPE, SEEDED_OUTSIDE).items():
                if caller.name in LEDGER_ALLOWED[method]:
                    code = await call(
                        channel, f"/tally.v1.Ledger/{method}", request, LEDGER_RESPONSES[method]
                    )
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (method, caller.name)


async def test_revoked_token_is_unauthenticated(token_node: NodeHandle) -> None:
    text, jti = directory.issue_token(security.root(), "to-revoke", {Role.READER}, ("**",))
    presented = ClientSecurity(security.admin().ca, token=text)
    request = pb.GetAccountsRequest(ids=[IN_SCOPE])
    async with aio_channel(token_node.target, presented) as channel:
        assert (
            await call(channel, "/tally.v1.Ledger/GetAccounts", request, pb.GetAccountsResponse)
            == grpc.StatusCode.OK
        )
        directory.revoke(security.root(), jti)
        code, details = await first_refusal(channel, request)
    assert code == grpc.StatusCode.UNAUTHENTICATED and jti in details


# ---- the audit server ----


@pytest.fixture
async def audit_server(node: NodeHandle) -> AsyncIterator[AuditServer]:
    server = AuditServer(
        AuditServiceConfig(
            dsns=(node.dsn,),
            listen="127.0.0.1:0",
            security=security.server_security(),
            shutdown_grace_s=0.5,
        )
    )
    await server.start()
    try:
        yield server
    finally:
        server.request_stop()
        await server.run()


async def test_audit_server_matrix(audit_server: AuditServer) -> None:
    for caller in CALLERS:
        await audit_row(audit_server, caller)


async def audit_row(audit_server: AuditServer, caller: Caller) -> None:
    async with aio_channel(f"127.0.0.1:{audit_server.port}", credentials_of(caller)) as channel:
        for method, (request, response_type, stream) in AUDIT_METHODS.items():
            code, details = await call_detailed(
                channel, f"/tally.v1.Audit/{method}", request, response_type, stream
            )
            if caller.name in AUDIT_ALLOWED:
                assert code == grpc.StatusCode.OK, (method, caller.name, code, details)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (method, caller.name, code)
                assert "auditor" in details
        assert (
            await call(
                channel,
                "/grpc.health.v1.Health/Check",
                health_pb2.HealthCheckRequest(),
                health_pb2.HealthCheckResponse,
            )
            == grpc.StatusCode.OK
        )


async def test_audit_server_refuses_plain_callers(audit_server: AuditServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{audit_server.port}") as channel:
        request, response_type, _ = AUDIT_METHODS["RunAudit"]
        code = await call(channel, "/tally.v1.Audit/RunAudit", request, response_type)
    assert code == grpc.StatusCode.UNAVAILABLE
