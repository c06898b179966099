"""What the tests of `tally up` share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local_up import scratch_directory


@pytest.fixture
def scratch() -> Iterator[Path]:
    """Where tally up keeps its data (outside pytest's root: see tests/support/local_up.py)."""
    with scratch_directory() as path:
        yield path
