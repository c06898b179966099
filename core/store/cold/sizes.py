"""The sizes of cold segments that a command's arguments name, apart from the code that writes
them: `tally`'s parser reads these without importing pyarrow."""

from __future__ import annotations

from typing import Final

# A segment is verified and read back whole by its writer and by verify_segment: this bounds
# that memory (core/store/cold/format.py says how much).
SEGMENT_BLOCK_COUNT_MAX: Final = 100_000
BLOCKS_PER_SEGMENT_DEFAULT: Final = 10_000
