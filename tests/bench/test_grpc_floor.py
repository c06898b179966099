"""The gRPC floor benchmark (bench/closed_loop/grpc_floor.py) runs end to end at small scale: a
real TLS server process answering real callers, measured per call. Never how fast."""

from __future__ import annotations

import json
from pathlib import Path

from bench.closed_loop import grpc_floor


def test_the_floor_server_answers_and_both_sides_are_metered(tmp_path: Path) -> None:
    argv = ["--clients", "4", "--duration-s", "1", "--warmup-s", "0.2", "--out", str(tmp_path)]
    assert grpc_floor.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["clients"] == 4
    assert result["calls_per_s"] > 0
    assert result["cpu_us_per_call"]["server"] > 0
    assert result["cpu_us_per_call"]["callers"] > 0
