"""Client options for a managed Kafka, and a key layout that Redis Cluster accepts:
all of an input partition's keys under one hash tag, the tags spread over the slot range."""

import random
import re
import ssl

import faust
import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from contracts import keys
from contracts.dashboard import minute_key
from features.hits import STATE_INDEX, empty_state
from stream.kafka import client_options, faust_broker, faust_credentials
from stream.settings import StreamSettings
from stream.state import CloseWrite, HitWrite, ParkedHit, RedisStore, SessionWrite
from tests.stream.conftest import as_on_a_cluster


def test_plaintext_by_default() -> None:
    s = StreamSettings(kafka_bootstrap="127.0.0.1:9092")
    assert client_options(s) == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_credentials(s) is None
    assert faust_broker(s) == "kafka://127.0.0.1:9092"


def test_sasl_over_tls_for_a_managed_cluster() -> None:
    s = StreamSettings(
        kafka_bootstrap="b-1.example:9096,b-2.example:9096",
        kafka_security_protocol="sasl_ssl",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="scorer",
        kafka_sasl_password="secret",
    )
    o = client_options(s)
    assert o["security_protocol"] == "SASL_SSL"
    assert o["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (o["sasl_plain_username"], o["sasl_plain_password"]) == ("scorer", "secret")
    assert isinstance(o["ssl_context"], ssl.SSLContext)
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials) and creds.username == "scorer"
    assert faust_broker(s) == "kafka://b-1.example:9096;kafka://b-2.example:9096"


def test_tls_only() -> None:
    s = StreamSettings(kafka_security_protocol="SSL")
    assert "sasl_mechanism" not in client_options(s)
    assert isinstance(faust_credentials(s), faust.SSLCredentials)


def _tag(key: str) -> str:
    found = re.search(r"\{([^}]+)\}", key)
    assert found is not None, key
    return found.group(1)


def _partition_keys(layout: keys.Layout, partition: int, sid: str) -> list[str]:
    """Every kind of key the worker keeps for a partition, with a session's."""
    dash = layout.dash(partition)
    return [
        layout.session(partition, sid),
        layout.pending(partition, sid),
        layout.open_sessions(partition),
        layout.watermark(partition),
        layout.applied(partition),
        f"{dash}:all",
        f"{dash}:m5:5464000",
        f"{dash}:h:455333",
        f"{dash}:d:18972",
        f"{dash}:hot",
        f"{dash}:meta",
        minute_key(dash, 27320000),
    ]


def test_a_partitions_keys_share_one_hash_slot() -> None:
    layout = keys.Layout("scorer", 6)
    sid = "9055434745589932991.1637753792.1637753792"
    slots = []
    for p in range(6):
        found = _partition_keys(layout, p, sid)
        assert len(set(found)) == len(found)
        # One tag, the partition's, and so one Cluster slot, whatever the session.
        assert {_tag(k) for k in found} == {keys.partition_tag(p, 6)}
        assert {key_slot(k.encode()) for k in found} == {
            key_slot(keys.partition_tag(p, 6).encode())
        }
        assert all(k.startswith(layout.base(p)) for k in found)
        slots.append(key_slot(found[0].encode()))
    # A session id with braces of its own does not move its keys off the partition's slot.
    odd = "{x}.1.2"
    assert key_slot(layout.session(4, odd).encode()) == slots[4]
    assert key_slot(layout.pending(4, odd).encode()) == slots[4]
    assert len(set(slots)) == 6


def test_partition_keys_depend_on_the_partition_count_and_prefix() -> None:
    six, twelve = keys.Layout("scorer", 6), keys.Layout("scorer", 12)
    assert six.session(1, "s") != twelve.session(1, "s")
    assert keys.Layout("other", 6).session(1, "s") != six.session(1, "s")
    assert six.session(1, "s").startswith("scorer:{6.1.")
    with pytest.raises(ValueError):
        keys.partition_tag(6, 6)
    with pytest.raises(ValueError):
        keys.Layout("scorer", 0)


def _masters(n_masters: int) -> list[tuple[int, int]]:
    """The slot ranges (first, last) of masters as ``redis-cli --cluster create`` makes them."""
    per = REDIS_CLUSTER_HASH_SLOTS / n_masters
    out, first, cursor = [], 0, 0.0
    for i in range(n_masters):
        last = int(cursor + per - 1 + 0.5)  # C's lround, for positive numbers
        if last > REDIS_CLUSTER_HASH_SLOTS or i == n_masters - 1:
            last = REDIS_CLUSTER_HASH_SLOTS - 1
        out.append((first, max(last, first)))
        first = max(last, first) + 1
        cursor += per
    return out


def test_three_masters_as_redis_cli_makes_them() -> None:
    assert _masters(3) == [(0, 5460), (5461, 10922), (10923, 16383)]


@pytest.mark.parametrize(("partitions", "per_master"), [(6, 2), (12, 4), (3, 1), (24, 8)])
def test_partition_tags_spread_evenly_over_three_masters(partitions: int, per_master: int) -> None:
    masters = _masters(3)
    held = [0, 0, 0]
    for p in range(partitions):
        slot = key_slot(keys.partition_tag(p, partitions).encode())
        # In the partition's own share of the slot range ...
        low = p * REDIS_CLUSTER_HASH_SLOTS // partitions
        high = (p + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions
        assert low <= slot < high, (p, slot)
        # ... and so on one third of the range: the masters hold equal numbers.
        (m,) = [m for m, (first, last) in enumerate(masters) if first <= slot <= last]
        held[m] += 1
    assert held == [per_master] * 3


def test_kafka_partition_agrees_with_the_default_partitioner() -> None:
    rng = random.Random(20211124)
    partitioner = DefaultPartitioner()
    chosen = []
    for _ in range(400):
        key = f"{rng.getrandbits(63)}.{rng.randint(1_600_000_000, 1_700_000_000)}".encode()
        key += rng.randbytes(rng.randint(0, 5))
        for n in (1, 6, 7, 12):
            every = list(range(n))
            assert keys.kafka_partition(key, n) == partitioner(key, every, every), (key, n)
        chosen.append(keys.kafka_partition(key, 6))
    assert set(chosen) == set(range(6))  # a real spread, not one partition
    layout = keys.Layout("scorer", 6)
    assert layout.partition_of("a.b.c") == keys.kafka_partition(b"a.b.c", 6)


# Kafka's own murmur2 test vectors (the Java client's UtilsTest.testMurmur2), so the
# partition agrees with Java producers too, not only with aiokafka.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_kafka_partition_matches_the_java_clients_hash() -> None:
    for key, java_hash in JAVA_MURMUR2.items():
        for n in (6, 12, 7):
            assert keys.kafka_partition(key, n) == (java_hash & 0x7FFFFFFF) % n, key


T0 = 1_640_000_000_000.0


@pytest.mark.redis
async def test_a_sessions_keys_are_found_only_under_its_partitions_tag(store: RedisStore) -> None:
    """Everything the store writes for sessions of partition 3 is under partition 3's tag,
    its dashboard share too on Redis Cluster where it is its master's lowest partition."""
    store, masters = as_on_a_cluster(store)
    masters.where = {p: int(p == 3) for p in masters.where}
    layout = store.layout
    tag = keys.partition_tag(3, layout.partitions)
    await store.park([ParkedHit("early", b"{}", 3, 7, 1.0)])
    start = SessionWrite(
        session_id="s",
        client_id="c",
        start="2021-12-20T11:33:20+00:00",
        vector=np.zeros(3, dtype=np.float32),
        score_json=b"{}",
        history_field="session_start:",
        partition=3,
        event_ms=T0,
        probability=0.1,
        channel=["cpc", "src", "(none)", "mobile", "Moscow"],
    )
    await store.write(
        [start],
        [],
        {("sessions", 3): (T0, T0)},
        events={3: 1},
        offsets={("sessions", 3): 1},
    )
    await store.release({"s": 3})
    state = empty_state()
    state[STATE_INDEX["hits"]] = 1
    hit = HitWrite("s", state, [1], [("hit:1", b"{}")], partition=3, event_ms=T0, probability=0.2)
    await store.write([], [hit], {("hits", 3): (T0, T0)}, events={3: 1}, offsets={("hits", 3): 1})
    await store.prepare_close([CloseWrite("s", b"{}", "session_end:", None, partition=3)])
    await store.finish_close({3: ["s"]})

    found = [k.decode() async for k in store.r.scan_iter(match=f"{store.prefix}:*")]
    # The one key of no partition: the layout, recorded before the first write.
    assert keys.layout_key(store.prefix) in found
    assert await store.r.hgetall(keys.layout_key(store.prefix)) == {
        b"version": str(keys.LAYOUT_VERSION).encode(),
        b"partitions": str(layout.partitions).encode(),
    }
    found.remove(keys.layout_key(store.prefix))
    assert found
    assert {_tag(k) for k in found} == {tag}
    assert {key_slot(k.encode()) for k in found} == {key_slot(tag.encode())}
    for want in (
        layout.session(3, "s"),
        layout.pending(3, "early"),
        layout.watermark(3),
        layout.applied(3),
        f"{layout.dash(3)}:all",
        f"{layout.dash(3)}:meta",
    ):
        assert want in found, want
    # Read under its partition the session is there; under another, not.
    states, _ = await store.read({"s": 3})
    assert states["s"].known and states["s"].closed
    elsewhere, _ = await store.read({"s": 0})
    assert not elsewhere["s"].known
