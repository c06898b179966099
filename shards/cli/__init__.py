"""shards.cli: the `tally` command, the top room: it starts every process and talks to them.

May import: every room of the product (docs/design.md, "Layout").

Public face: no room imports it; its face is the command, main.main (the `tally` script of
pyproject.toml, and `python -m shards.cli` through __main__). terminal (the commands for people)
and logs (every process's log) are the command's own.
"""
