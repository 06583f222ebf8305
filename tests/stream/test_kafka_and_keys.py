"""Client options for a managed Kafka, and a key layout that Redis Cluster accepts."""

import re
import ssl

import faust

from contracts import keys
from stream.kafka import client_options, faust_broker, faust_credentials
from stream.settings import StreamSettings


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


def test_a_sessions_keys_share_one_hash_slot() -> None:
    sid = "9055434745589932991.1637753792.1637753792"
    per_session = [
        keys.session_key(sid, "scorer"),
        keys.pending_hits_key(sid, "scorer"),
        keys.latest_score_key(sid, "scorer"),
        keys.score_history_key(sid, "scorer"),
    ]
    assert {_tag(k) for k in per_session} == {sid}
    assert len(set(per_session)) == len(per_session)


def test_a_partitions_keys_share_one_hash_slot() -> None:
    assert _tag(keys.open_sessions_key(3, "scorer")) == _tag(keys.watermark_key(3, "scorer"))
    assert _tag(keys.open_sessions_key(3, "scorer")) != _tag(keys.open_sessions_key(4, "scorer"))
