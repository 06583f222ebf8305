"""Kafka topic names (the contract with the website and downstream consumers)."""

SESSIONS = "ga.sessions"
HITS = "ga.hits"
SCORES = "conversion.scores"
OUTCOMES = "conversion.outcomes"
DEAD_LETTERS = "ga.dead-letters"

ALL_TOPICS: tuple[str, ...] = (SESSIONS, HITS, SCORES, OUTCOMES, DEAD_LETTERS)
INPUT_TOPICS: tuple[str, ...] = (SESSIONS, HITS)  # keyed by session id, co-partitioned


def topic_name(base: str, prefix: str = "") -> str:
    """Return a topic's name under an optional prefix (tests isolate runs with one)."""
    return f"{prefix}{base}"
