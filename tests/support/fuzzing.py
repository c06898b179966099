"""Fuzzing helpers shared by the fuzz tests of the Ledger and Shard services: values at the
edges, random text, and random changes to any protobuf message through its descriptors (nasty
strings, integers at the type boundaries, unknown enum numbers, dropped / duplicated /
multiplied repeated items, oversize maps), and byte-level damage to a serialized request."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf import descriptor
from google.protobuf.message import Message

from core import limits
from tests.support.helpers import leg

MAX = limits.amount_max
GROWTH_BYTES_MAX = 40 << 20  # a multiplied repeated field stays below this


@dataclass
class Tally:
    """What a fuzz run saw: the gRPC statuses and result codes of its answers, and the failures
    it must not see (each with the start of the request's body, for reproducing it)."""

    preview_byte_count: int = 120
    statuses: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def fail(self, method: str, body: bytes, problem: str) -> None:
        preview = body[: self.preview_byte_count]
        self.failures.append(f"{method} ({len(body)} bytes, {preview!r}...): {problem}")


class FuzzWorld(Protocol):
    """What the mutations draw from: a seeded random source and the generator's own values."""

    rng: random.Random

    def string(self) -> str: ...

    def amount(self) -> int: ...

    def all_accounts(self) -> list[str]: ...


# ---- the values mutations draw from ----

U64 = [0, 1, 2, 2**31 - 1, 2**32 - 1, 2**32, 2**62, MAX - 1, MAX, 2**63, 2**64 - 2, 2**64 - 1]
U32 = [0, 1, 2, 65535, 65536, 7_776_000, 7_776_001, 2**31 - 1, 2**31, 2**32 - 1]
I64 = [-(2**63), -(2**63) + 1, -1, 0, 1, 2**31, 2**32, 2**62, MAX - 1, MAX]
I32 = [-(2**31), -1, 0, 1, 2, 3, 7, 100, 2**31 - 1]
NASTY_STRINGS = [
    "",
    " ",
    "a",
    "A" * 128,
    "A" * 129,
    "é" * 64,
    "é" * 65,
    "\x00",
    "a\x00b",
    "\n",
    "a\tb",
    "@",
    "@@x",
    "a@b",
    "@x",
    "/",
    "a/",
    "~expired/x",
    "~expired/",
    "a,b",
    "a b",
    "a|b",
    "a;b",
    "'; DROP TABLE accounts; --",
    "%s%n%x",
    "\\",
    '"',
    "USD",
    "usd",
    "EUR",
    "JPY",
    "XXX",
    "US",
    "USDD",
    "2026-02-30",
    "2024-02-29",
    "2026-13-01",
    "0000-01-01",
    "tomorrow",
    "٢٠٢٦-٠١-٠١",
    "0",
    "-1",
    "1.5",
    "9223372036854775807",
    "9223372036854775808",
    "9999999999999999999",
    "18446744073709551615",
    "1" * 20,
    "²",
    "١٢",
    "\u202e",
    "\ufeff",
    "\U0001f642" * 40,
    "\U0010ffff",
]


def random_unicode(rng: random.Random, length: int) -> str:
    chars = []
    for _ in range(length):
        roll = rng.random()
        if roll < 0.5:
            chars.append(chr(rng.randint(0x20, 0x7E)))
        elif roll < 0.6:
            chars.append(chr(rng.randint(0, 0x1F)))
        else:
            point = rng.randint(0x80, 0x10FFFF)
            if 0xD800 <= point <= 0xDFFF:  # surrogates are not valid in a protobuf string
                point = 0xFFFD
            chars.append(chr(point))
    return "".join(chars)


# ---- mutation through descriptors ----

FD = descriptor.FieldDescriptor


def _is_map(fd: Any) -> bool:
    return fd.type == FD.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def _is_repeated(fd: Any) -> bool:
    return bool(fd.is_repeated)


def _slots(message: Message) -> list[tuple[Message, Any]]:
    """Every (message, field) pair reachable in message, nested repeated messages included."""
    found = []
    for fd in message.DESCRIPTOR.fields:
        found.append((message, fd))
        if fd.type == FD.TYPE_MESSAGE and not _is_map(fd):
            if _is_repeated(fd):
                for child in getattr(message, fd.name):
                    found.extend(_slots(child))
            elif message.HasField(fd.name):
                found.extend(_slots(getattr(message, fd.name)))
    return found


def _scalar(world: FuzzWorld, fd: Any) -> Any:
    rng = world.rng
    if fd.type == FD.TYPE_STRING:
        return world.string()
    if fd.type == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if fd.type == FD.TYPE_UINT64:
        return rng.choice(U64) if rng.random() < 0.8 else rng.randint(0, 2**64 - 1)
    if fd.type == FD.TYPE_UINT32:
        return rng.choice(U32) if rng.random() < 0.8 else rng.randint(0, 2**32 - 1)
    if fd.type == FD.TYPE_INT64:
        return rng.choice(I64) if rng.random() < 0.8 else rng.randint(-(2**63), 2**63 - 1)
    if fd.type in (FD.TYPE_INT32, FD.TYPE_ENUM):
        return rng.choice(I32)
    raise AssertionError(f"no generator for field {fd.full_name} of type {fd.type}")


def _mutate_map(world: FuzzWorld, mapping: Any) -> None:
    rng = world.rng
    roll = rng.random()
    if roll < 0.2:
        mapping.clear()
    elif roll < 0.35:
        for i in range(rng.choice([16, 17, 100])):
            mapping[f"k{i}"] = "v"
    elif roll < 0.7:
        mapping[world.string()] = world.string()
    else:
        mapping[rng.choice(["a", "k" * 64, "k" * 65, "x.y-z_0"])] = world.string()


def _mutate_repeated(world: FuzzWorld, message: Message, fd: Any) -> None:
    rng = world.rng
    container = getattr(message, fd.name)
    roll = rng.random()
    if roll < 0.15:
        message.ClearField(fd.name)
    elif roll < 0.35 and len(container):
        del container[rng.randrange(len(container))]
    elif roll < 0.6 and len(container):
        original = container[rng.randrange(len(container))]
        if fd.type == FD.TYPE_MESSAGE:
            container.add().CopyFrom(original)
        else:
            container.append(original)
    elif roll < 0.68 and len(container):
        target = rng.choice([2, 33, limits.batch_item_count_max + 1])
        items = list(container)
        if fd.type == FD.TYPE_MESSAGE:
            item_bytes = max(item.ByteSize() for item in items)
        else:
            item_bytes = max(len(str(item).encode()) for item in items)
        # Keep the fuzzer's own memory bounded: a few times the server's message limit.
        target = min(target, max(len(items), GROWTH_BYTES_MAX // (item_bytes + 2)))
        while len(container) < target:
            if fd.type == FD.TYPE_MESSAGE:
                container.add().CopyFrom(items[len(container) % len(items)])
            else:
                container.append(items[len(container) % len(items)])
    elif fd.type == FD.TYPE_MESSAGE:
        child = container.add()
        if rng.random() < 0.5 and fd.message_type.name == "Leg":
            child.CopyFrom(
                leg(rng.choice(world.all_accounts()), rng.choice([1, 2]), world.amount())
            )
        else:
            for child_fd in child.DESCRIPTOR.fields:
                if not _is_repeated(child_fd) and child_fd.type != FD.TYPE_MESSAGE:
                    if rng.random() < 0.5:
                        setattr(child, child_fd.name, _scalar(world, child_fd))
    elif fd.type == FD.TYPE_STRING:
        container.append(world.string())
    else:  # a repeated number (e.g. shard ids)
        container.append(_scalar(world, fd))


def mutate(world: FuzzWorld, message: Message) -> None:
    """One random change somewhere in message, in place."""
    target, fd = world.rng.choice(_slots(message))
    if _is_map(fd):
        _mutate_map(world, getattr(target, fd.name))
    elif _is_repeated(fd):
        _mutate_repeated(world, target, fd)
    elif fd.type == FD.TYPE_MESSAGE:  # a singular message: cleared, or set with a random field
        if target.HasField(fd.name) and world.rng.random() < 0.5:
            target.ClearField(fd.name)
        else:
            child = getattr(target, fd.name)
            child.SetInParent()
            scalars = [f for f in child.DESCRIPTOR.fields if not _is_repeated(f)]
            scalars = [f for f in scalars if f.type != FD.TYPE_MESSAGE]
            if scalars:
                chosen = world.rng.choice(scalars)
                setattr(child, chosen.name, _scalar(world, chosen))
    else:
        setattr(target, fd.name, _scalar(world, fd))


def corrupt(world: FuzzWorld, body: bytes) -> bytes:
    """Byte-level damage to a serialized request."""
    rng = world.rng
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.35 and data:
            data[rng.randrange(len(data))] = rng.choice(
                [0x00, 0x7F, 0x80, 0xFF, rng.randrange(256)]
            )
        elif roll < 0.5 and data:
            del data[rng.randrange(len(data)) :]
        elif roll < 0.7:
            position = rng.randint(0, len(data))
            data[position:position] = rng.randbytes(rng.randint(1, 8))
        elif roll < 0.85 and data:
            start = rng.randrange(len(data))
            data.extend(data[start : start + rng.randint(1, 64)])
        else:
            data.extend(body)  # repeated fields twice; singular fields overwritten
    return bytes(data)
