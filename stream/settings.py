"""Settings of the stream worker and the replayer, read once at the entry point."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class StreamSettings(BaseSettings):
    """Where the worker reads, writes and keeps state; environment prefix ``SCORER_``."""

    model_config = SettingsConfigDict(env_prefix="SCORER_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"  # or SSL, SASL_PLAINTEXT, SASL_SSL
    kafka_sasl_mechanism: str = "PLAIN"  # or SCRAM-SHA-256, SCRAM-SHA-512
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None  # CA bundle; the system's when unset
    kafka_ssl_certfile: str | None = None  # client certificate (mutual TLS)
    kafka_ssl_keyfile: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # redis_url names one node of a Redis Cluster
    model_path: Path = Path("models/Pickled_model.pkl")
    # The artifact's SHA-256, pinned outside the model folder: any other file is refused.
    model_sha256: str | None = None
    topic_prefix: str = ""
    redis_key_prefix: str = "scorer"
    app_id: str = "sberauto-scorer"
    data_dir: Path = Path(".stack/faust")
    topic_partitions: int = 6
    topic_replication: int = 1  # replicas of each topic created (3 on a three-node cluster)
    session_ttl_s: int = 6 * 3600
    state_cache_sessions: int = 50_000  # sessions whose Redis state the worker keeps in memory
    batch_max: int = 500
    redis_retries: int = 8  # attempts (backoff 0.1 s doubling to 5 s) before the worker exits
    session_gap_s: float = 1800.0  # event-time inactivity after which a session is closed
    close_check_s: float = 0.25  # how often the worker looks for sessions to close
    align_lead_s: float = 21600.0  # event time ga.sessions may run ahead of ga.hits; 0: no limit
    kafka_max_fetch_bytes: int = 1024**2  # most bytes fetched from one partition per request
    # The broker answers a fetch once it has kafka_fetch_min_bytes, or after
    # kafka_fetch_wait_ms: at a steady rate a fetch brings what came during the last one.
    kafka_fetch_wait_ms: int = 3
    kafka_fetch_min_bytes: int = 1024**2
    kafka_session_timeout_s: float = 10.0  # a worker that vanished loses its partitions after this
    metrics_port: int = 9108  # Prometheus metrics over HTTP; 0: not served
    metrics_host: str = "127.0.0.1"  # the address every metrics server binds (0.0.0.0: all)
    model_reload_s: float = 5.0  # how often to look for a newly deployed artifact; 0: never
    quality_window_s: float = 3600.0  # online quality: the rolling window of outcomes
    quality_metrics_port: int = 9109  # online quality: its Prometheus port
    # Online recalibration (stream/recalibration.py), run by the quality process:
    recalibrate: bool = True  # estimate and publish online calibrations
    recal_window: int = 20_000  # outcomes in the window
    recal_min_outcomes: int = 5_000  # ... before the shift moves at all
    recal_min_conversions: int = 100
    recal_every: int = 1_000  # outcomes between estimates
    recal_max_step: float = 0.1  # log-odds per update
    recal_alert_shift: float = 0.5  # log-odds: beyond it, the alert fires
    calibration_follow_s: float = 1.0  # worker and API: how often to look for a new one
    reasons: bool = True  # the worker explains its Warm and Hot scores (stream/leads.py)
    dashboard_retention_s: int = 30 * 86400  # dashboard: expiry of daily and all-time data
    log_level: str = "info"
