"""The evaluation's one-line verdict: the headline as multiples of the noise floor, good within 2×."""
from backmap.api.metrics import GOOD_FACTOR, verdict


def test_each_candidate_is_a_multiple_of_the_floor_and_good_only_within_the_factor():
    line = verdict({"candidates": {"alone": 0.0638, "refined": 0.0125, "edge": 0.0226}, "noise_floor": 0.0113})
    assert GOOD_FACTOR == 2.0
    assert "alone 0.0638 = 5.6× (not yet good)" in line
    assert "refined 0.0125 = 1.1× (good)" in line
    assert "edge 0.0226 = 2.0× (good)" in line
    assert "noise floor 0.0113" in line


def test_without_a_floor_it_says_so_instead_of_dividing():
    assert "no noise floor" in verdict({"candidates": {"a": 0.3}, "noise_floor": None})
    assert "no noise floor" in verdict({"candidates": {"a": 0.3}, "noise_floor": 0.0})
