"""The Redis key layout, built in one place.

Everything the worker keeps for an input partition lives under that partition's hash tag
(``{...}``): its sessions, their parked hits, its open set, event-time marks and applied
offsets, and its share of the dashboard's aggregates. On Redis Cluster a hash tag is one
slot, so a batch's writes for one partition are one atomic Lua call on one node, and the
partitions spread over the nodes. On a single Redis the same keys are written in one call
for all partitions.

A partition's tag is chosen so that the partitions of a topic fall evenly on Redis
Cluster's slot range (``partition_tag``): with P partitions and M masters holding equal
slot ranges, as ``redis-cli --cluster create`` makes them, each master holds P / M of
them. It depends on the partition count, which the worker records under ``layout_key``;
the API reads it there to find a session's keys (``Layout.partition_of``).

A session's keys are found by its partition: a session row and its hits are keyed by
session id on topics with the same partition count, so they share a partition number.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import msgpack
from aiokafka.partitioner import murmur2
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

KEY_PREFIX = "scorer"
# The layout's version, recorded with the partition count: keys of another layout are
# not read (a deployment that changes layout starts from Kafka, as after a Redis loss).
LAYOUT_VERSION = 2
# The hit-state counters in the session hash: one field, the counters packed as float64
# (little-endian) in the order of ``features.hits.STATE_NAMES``. A counter added later
# goes at the end, so a shorter vector stored before reads with the new counter empty.
HIT_STATE_FIELD = "hs"
# The session hash's field naming its latest score's history field (``trigger:number``;
# hashes written before held the ScoreEvent JSON itself, which readers still take).
LATEST_FIELD = "latest"
# The session hash's field holding what its row gave, packed (``pack_row``).
ROW_FIELD = "row"
# The session hash's field holding the highest tier it made a lead of (1 warm, 2 hot;
# absent: none), written with the score that made it (``contracts.leads``).
LEAD_FIELD = "lead"


@dataclass(frozen=True)
class StoredRow:
    """What a session's row gave, as the session hash keeps it in one field."""

    start: str  # ISO start time
    client_id: str | None
    vector: bytes  # the session features as float32
    start_ms: float
    channel: tuple[str, ...]  # utm_medium, utm_source, utm_campaign, device, city


def pack_row(row: StoredRow) -> bytes:
    """Return the ``row`` field's value."""
    # Without MessagePack's bin type, which the Lua of Redis 7.0 cannot read: the
    # scripts read the start time and channel of a converting session from it.
    return msgpack.packb(
        [row.start, row.client_id, row.vector, row.start_ms, list(row.channel)],
        use_bin_type=False,
    )


def unpack_row(raw: bytes) -> StoredRow:
    """Return what a ``row`` field holds."""
    start, client_id, vector, start_ms, channel = msgpack.unpackb(raw, raw=True)
    return StoredRow(
        start.decode(),
        None if client_id is None else client_id.decode(),
        vector,
        float(start_ms),
        tuple(v.decode() for v in channel),
    )


def pack_hit_state(values: Sequence[float]) -> bytes:
    """Return the ``hs`` field's value for a session's hit-state counters."""
    return struct.pack(f"<{len(values)}d", *values)


def unpack_hit_state(raw: bytes, empty: Sequence[float]) -> list[float]:
    """Return the counters of an ``hs`` field; ``empty`` gives the count and the defaults.

    Counters missing from a shorter vector take their empty values; extra ones are
    dropped.
    """
    n = min(len(raw) // 8, len(empty))
    return [*struct.unpack_from(f"<{n}d", raw), *empty[n:]]


def kafka_partition(key: bytes, partitions: int) -> int:
    """Return the partition Kafka's default partitioner gives a record key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=4096)
def partition_tag(partition: int, partitions: int) -> str:
    """Return the hash tag of an input partition's keys.

    The tag's Cluster slot lies in the partition's share of the slot range (partition
    p of n: slots from p * 16384 / n), so that the partitions spread evenly over
    masters holding equal ranges. It is the first ``<n>.<p>.<k>`` (k = 0, 1, ...) whose
    slot falls there: the same for every process, found in about n tries.
    """
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is not one of {partitions}")
    low = partition * REDIS_CLUSTER_HASH_SLOTS // partitions
    high = (partition + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
    k = 0
    while True:
        tag = f"{partitions}.{partition}.{k}"
        if low <= key_slot(tag.encode()) < high:
            return tag
        k += 1


def calibrations_key(prefix: str = KEY_PREFIX) -> str:
    """Return the hash of the online calibrations in use: model version -> record JSON.

    A copy of the latest record per version on ``conversion.calibrations``, kept by the
    worker for the API; the topic is the record, and the worker writes it again.
    """
    return f"{prefix}:calibrations"


def layout_key(prefix: str = KEY_PREFIX) -> str:
    """Return the hash recording the layout: ``version`` and ``partitions``."""
    return f"{prefix}:layout"


class Layout:
    """A deployment's keys: its prefix and the partition count of its input topics."""

    def __init__(self, prefix: str = KEY_PREFIX, partitions: int = 6) -> None:
        if partitions < 1:
            raise ValueError("an input topic has at least one partition")
        self.prefix = prefix
        self.partitions = partitions
        self._bases = [f"{prefix}:{{{partition_tag(p, partitions)}}}:" for p in range(partitions)]

    def base(self, partition: int) -> str:
        """Return the start of every key of a partition (prefix and hash tag)."""
        return self._bases[partition]

    def partition_of(self, session_id: str) -> int:
        """Return the partition a session id's records land on by Kafka's default."""
        return kafka_partition(session_id.encode(), self.partitions)

    def session(self, partition: int, session_id: str) -> str:
        """Return the hash holding all of a session: see ``stream/state.py``."""
        return f"{self._bases[partition]}s:{session_id}"

    def pending(self, partition: int, session_id: str) -> str:
        """Return the list of hits that arrived before their session's row."""
        return f"{self._bases[partition]}q:{session_id}"

    def open_sessions(self, partition: int) -> str:
        """Return the sorted set of a partition's open sessions, by last event time (ms).

        The worker that owns the partition closes its sessions.
        """
        return f"{self._bases[partition]}open"

    def watermark(self, partition: int) -> str:
        """Return the hash of a partition's event-time marks.

        Fields ``{sessions,hits}_{event,wall}_ms``.
        """
        return f"{self._bases[partition]}watermark"

    def applied(self, partition: int) -> str:
        """Return the hash of the input offsets a partition's stored state reflects.

        Fields ``sessions`` and ``hits``: the next offset of that input partition; every
        record before it is applied in Redis (written with the state, in the same call).
        A Redis that lost writes has a lower offset, or none, and the worker reads the
        input again from there (``stream/recovery.py``).
        """
        return f"{self._bases[partition]}applied"

    def dash(self, partition: int) -> str:
        """Return the prefix of a partition's share of the dashboard's aggregates."""
        return f"{self._bases[partition]}dash"

    def probe(self, partition: int) -> str:
        """Return a key of the partition's slot that is never written.

        A Redis Cluster script looks for it before it writes: a slot its node does not
        hold, or one being migrated, fails the call there (``stream/state.py``).
        """
        return f"{self._bases[partition]}probe"
