"""Raw SQL on a shard's database: what someone with write access does behind Tally's back, and
what a test reads of what Tally wrote."""

from __future__ import annotations

from typing import Any

import asyncpg


async def fetch_one(dsn: str, sql: str, *args: object) -> Any:
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        return await connection.fetchrow(sql, *args, timeout=30)
    finally:
        await connection.close(timeout=10)


async def execute(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        for sql in statements:
            await connection.execute(sql, timeout=30)
    finally:
        await connection.close(timeout=10)


async def execute_with(dsn: str, sql: str, *args: object) -> None:
    """One statement with its arguments bound."""
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        await connection.execute(sql, *args, timeout=30)
    finally:
        await connection.close(timeout=10)
