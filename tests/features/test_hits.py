import itertools

import numpy as np

from features.hits import (
    HIT_FEATURES,
    STATE_INDEX,
    combine,
    cumulative_states,
    empty_state,
    hit_feature_matrix,
    hit_increments,
)

HITS = {
    "hit_number": [1, 2, 4, 7],
    "hit_time": [0.0, 15_000.0, None, 95_000.0],
    "event_action": ["view_card", "photos_view", "sub_car_claim_click", "search_form_region"],
}


def test_increments_classify_actions() -> None:
    inc = hit_increments(HITS)
    assert inc[:, STATE_INDEX["card_views"]].tolist() == [1, 0, 0, 0]
    assert inc[:, STATE_INDEX["photo_views"]].tolist() == [0, 1, 0, 0]
    assert inc[:, STATE_INDEX["target_hits"]].tolist() == [0, 0, 1, 0]
    assert inc[:, STATE_INDEX["search"]].tolist() == [0, 0, 0, 1]
    assert inc[:, STATE_INDEX["max_hit_time_ms"]].tolist() == [0, 15_000, -1, 95_000]


def test_state_does_not_depend_on_arrival_order() -> None:
    inc = hit_increments(HITS)
    finals = set()
    for order in itertools.permutations(range(len(inc))):
        state = empty_state()
        for i in order:
            state = combine(state, inc[i])
        finals.add(tuple(state))
    assert len(finals) == 1
    final = np.array(finals.pop())
    assert final[STATE_INDEX["hits"]] == 4
    assert final[STATE_INDEX["max_hit_number"]] == 7
    assert final[STATE_INDEX["max_hit_time_ms"]] == 95_000


def test_cumulative_states_match_applying_hits_one_by_one() -> None:
    rng = np.random.default_rng(3)
    sessions = np.repeat(np.arange(5), [3, 1, 4, 2, 5])
    n = len(sessions)
    cols = {
        "hit_number": np.concatenate([np.arange(1, k + 1) for k in [3, 1, 4, 2, 5]]),
        "hit_time": [
            None if rng.random() < 0.3 else float(rng.integers(0, 10**6)) for _ in range(n)
        ],
        "event_action": rng.choice(["view_card", "photo_open", "x", "sub_landing"], n).tolist(),
    }
    inc = hit_increments(cols)
    batch = cumulative_states(sessions, inc)
    state = empty_state()
    for i in range(n):
        if i == 0 or sessions[i] != sessions[i - 1]:
            state = empty_state()
        state = combine(state, inc[i])
        np.testing.assert_allclose(batch[i], state)


def test_features_of_a_state() -> None:
    state = empty_state()
    for row in hit_increments(HITS):
        state = combine(state, row)
    x = hit_feature_matrix(state)
    f = dict(zip(HIT_FEATURES, x[0].tolist(), strict=True))
    assert f["hits_seen"] == 4
    assert f["time_on_site_s"] == 95
    assert f["card_view_share"] == 0.25
    assert np.isnan(hit_feature_matrix(empty_state())[0, HIT_FEATURES.index("time_on_site_s")])
