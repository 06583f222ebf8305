"""Topic names under a prefix, and which input topic is which kind."""

from contracts.topics import InputTopics


def test_the_input_topics_know_their_names_and_kinds_under_a_prefix() -> None:
    inputs = InputTopics("run1.")
    assert (inputs.sessions, inputs.hits) == ("run1.ga.sessions", "run1.ga.hits")
    assert [inputs.kind(inputs.name(k)) for k in InputTopics.KINDS] == ["sessions", "hits"]
    assert "run1.ga.hits" in inputs and "ga.hits" not in inputs
