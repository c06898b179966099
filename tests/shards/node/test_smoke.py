from tests.support.helpers import CREDIT, Client, account, audit_problems, names, transfer


async def test_transfer_and_replay(channel, node):
    client = Client(channel)
    assert names(await client.create(account("@cash"), account("c1/dep", no_overdraft=True))) == [
        "RESULT_CODE_CREATED",
        "RESULT_CODE_CREATED",
    ]
    first = await client.post(transfer("t1", "@cash", "c1/dep", 500))
    again = await client.post(transfer("t1", "@cash", "c1/dep", 500))
    assert names([first[0].code, again[0].code]) == ["RESULT_CODE_CREATED", "RESULT_CODE_REPLAYED"]
    assert again[0].timestamp_ns == first[0].timestamp_ns
    assert (await client.balance("c1/dep")).available == 500
    assert CREDIT
    assert await audit_problems(node.dsn) == []
