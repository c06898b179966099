"""`python -m shards.cli`: the `tally` command."""

from shards.cli.main import main

raise SystemExit(main())
