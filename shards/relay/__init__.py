"""`tally relay`: the change stream of the books (Ledger.StreamJournal) published to NATS
JetStream, one subject per shard, each journal block once, in order, resuming from what the
broker has stored (see relay.py)."""
