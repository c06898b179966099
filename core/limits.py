"""Every limit a client or an operator can hit, in one place (documented in ledger.proto)."""

from typing import Final

batch_item_count_max: Final = 8190
id_length_max: Final = 128
leg_count_max: Final = 32
metadata_entry_count_max: Final = 16
metadata_key_length_max: Final = 64
metadata_value_length_max: Final = 256
amount_max: Final = 2**63 - 1
code_max: Final = 65535
pending_timeout_seconds_max: Final = 90 * 24 * 3600
list_postings_limit_max: Final = 1000
list_postings_limit_default: Final = 100
message_size_max_bytes: Final = 16 * 1024 * 1024
# RPCs one listener serves at once (--rpc-concurrency-max); beyond, RESOURCE_EXHAUSTED at once.
rpc_concurrency_max_default: Final = 1000
# The change stream (Ledger.StreamJournal): positions per request (one per shard), and streams
# one node or gateway serves at once (beyond, RESOURCE_EXHAUSTED; a gateway's stream holds one
# stream at each node, so a node's bound is also how many gateway streams its shard can feed).
stream_position_count_max: Final = 1024
stream_count_max: Final = 256
