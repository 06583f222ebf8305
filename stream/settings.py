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
    batch_within_s: float = 0.05
    redis_retries: int = 8
    log_level: str = "info"
