"""`python -m bench.lending` (`make bench-lending`): bench/lending/run.py."""

import os
import sys

# The bench starts processes while gRPC threads run here (see tests/conftest.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from bench.lending.run import main

sys.exit(main())
