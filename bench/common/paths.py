"""Where the benchmarks live in the checkout: the repository root (every child process runs
there, so `python -m bench...` and `python -m shards.cli` resolve) and the reports folder."""

from __future__ import annotations

from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
REPORTS_DIR: Final = REPO_ROOT / "bench" / "reports"
