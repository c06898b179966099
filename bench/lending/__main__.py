"""`python -m bench.lending` (`make bench-lending`): bench/lending/run.py; `python -m
bench.lending pace`: bench/lending/pace.py (does the monitor keep up with the batched rate)."""

import os
import sys

# The bench starts processes while gRPC threads run here (see tests/conftest.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

if sys.argv[1:2] == ["pace"]:
    from bench.lending.pace import main as pace

    sys.exit(pace(sys.argv[2:]))

from bench.lending.run import main

sys.exit(main())
