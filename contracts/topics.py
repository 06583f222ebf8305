"""Kafka topic names (the contract with the website and downstream consumers)."""

SESSIONS = "ga.sessions"
HITS = "ga.hits"
SCORES = "conversion.scores"
OUTCOMES = "conversion.outcomes"
DEAD_LETTERS = "ga.dead-letters"
CALIBRATIONS = "conversion.calibrations"  # one partition: the online calibrations in order
LEADS = "conversion.leads"  # sessions that just became Warm or Hot (contracts/leads.py)

ALL_TOPICS: tuple[str, ...] = (
    SESSIONS,
    HITS,
    SCORES,
    OUTCOMES,
    DEAD_LETTERS,
    CALIBRATIONS,
    LEADS,
)
SINGLE_PARTITION_TOPICS: tuple[str, ...] = (CALIBRATIONS,)
INPUT_TOPICS: tuple[str, ...] = (SESSIONS, HITS)  # keyed by session id, co-partitioned


def topic_name(base: str, prefix: str = "") -> str:
    """Return a topic's name under an optional prefix (tests isolate runs with one)."""
    return f"{prefix}{base}"


class InputTopics:
    """The two input topics' names under a prefix, and which kind ("sessions" or "hits")
    each is: the kind names a partition's applied offsets and event-time marks."""

    KINDS = ("sessions", "hits")

    def __init__(self, prefix: str = "") -> None:
        self.sessions = topic_name(SESSIONS, prefix)
        self.hits = topic_name(HITS, prefix)

    def kind(self, topic: str) -> str:
        """The kind of an input topic: "sessions" for the sessions topic, else "hits"."""
        return "sessions" if topic == self.sessions else "hits"

    def name(self, kind: str) -> str:
        """The topic of a kind."""
        return self.sessions if kind == "sessions" else self.hits

    def __contains__(self, topic: object) -> bool:
        return topic in (self.sessions, self.hits)
