"""What a campaign was asked to do and what it found: its configuration, its schedule as
injected, the history and the checker's verdict (what the report and the tests read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos import checker, faults
from bench.chaos.bank import History


@dataclass(frozen=True)
class CampaignConfig:
    out_dir: Path
    duration_s: float = 60.0
    seed: int = 1
    shard_count: int = 3
    gateway_count: int = 2
    client_count: int = 16
    customer_count: int = 200
    prepare_deadline_s: int = 5
    kinds: tuple[str, ...] = faults.KINDS
    keep_history: bool = False  # also when the run is clean
    keep_data: bool = False  # the PostgreSQL data directories (removed by default: ~40 MB each)


@dataclass
class Outcome:
    config: CampaignConfig
    schedule: list[faults.Fault]
    history: History
    verdict: checker.Verdict
    events: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    report_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not any(f.problems for f in self.schedule)
