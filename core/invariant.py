"""Invariant checks that survive `python -O` (bare asserts do not)."""

from typing import NoReturn


class InvariantError(RuntimeError):
    """A broken invariant is a bug: the process must stop, never carry on."""


def fail(message: str) -> NoReturn:
    raise InvariantError(message)


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)
