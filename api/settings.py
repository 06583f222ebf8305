"""Settings of the API, read once when the app is created."""

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Where the API finds its model and the stream's scores; prefix ``SCORER_``."""

    model_config = SettingsConfigDict(env_prefix="SCORER_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    model_path: Path = Path("models/Pickled_model.pkl")
    # The artifact's SHA-256, pinned outside the model folder: any other file is refused.
    model_sha256: str | None = None
    redis_cluster: bool = False  # redis_url names one node of a Redis Cluster
    redis_key_prefix: str = "scorer"
    api_key: str | None = None  # the scoring key: /predict, /predict/batch, /sessions, /model
    dashboard_key: str | None = None  # the dashboard's read-only key (its login)
    # Without keys the API does not start, unless this says it is a local demo (all open).
    api_insecure_demo: bool = False
    api_operator_port: int = 9110  # /metrics, /docs, /openapi.json; 0: not served
    metrics_host: str = "127.0.0.1"  # the address the operator port binds (0.0.0.0: all)
    max_batch_rows: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024  # a 10,000-row batch is about 7 MB
    model_reload_s: float = 5.0  # how often to look for a newly deployed artifact; 0: never
    calibration_follow_s: float = 1.0  # how often to look for a new online calibration; 0: never
