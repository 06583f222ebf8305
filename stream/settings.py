"""Settings of the stream worker and the replayer, read once at the entry point."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class StreamSettings(BaseSettings):
    """Where the worker reads, writes and keeps state; environment prefix ``SCORER_``."""

    model_config = SettingsConfigDict(env_prefix="SCORER_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    model_path: Path = Path("models/Pickled_model.pkl")
    topic_prefix: str = ""
    redis_key_prefix: str = "scorer"
    app_id: str = "sberauto-scorer"
    data_dir: Path = Path(".stack/faust")
    topic_partitions: int = 6
    session_ttl_s: int = 6 * 3600
    batch_max: int = 500
    batch_within_s: float = 0.01  # longest wait for a batch to fill; bounds latency at low rates
    redis_retries: int = 8  # attempts (backoff 0.1 s doubling to 5 s) before the worker exits
    session_gap_s: float = 1800.0  # event-time inactivity after which a session is closed
    close_check_s: float = 1.0  # how often the worker looks for sessions to close
    kafka_session_timeout_s: float = 10.0  # a worker that vanished loses its partitions after this
    metrics_port: int = 9108  # Prometheus metrics over HTTP; 0: not served
    model_reload_s: float = 5.0  # how often to look for a newly deployed artifact; 0: never
    log_level: str = "info"
