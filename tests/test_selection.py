"""selection: the costlier of two models only on a significant gain on the same validation photos."""

import math

import numpy as np
import pytest

from image_classifier.selection import Comparison, can_ever_switch, compare, one_sided_p


def _pair(photos: int, both_right: int, gained: int, lost: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-or-wrong per photo for a simpler and a costlier model with these counts."""
    simple = np.zeros(photos, bool)
    costly = np.zeros(photos, bool)
    simple[:both_right] = costly[:both_right] = True
    costly[both_right : both_right + gained] = True
    simple[both_right + gained : both_right + gained + lost] = True
    return simple, costly


def test_mcnemars_exact_one_sided_p_value():
    assert one_sided_p(3, 0) == 1 / 8
    assert one_sided_p(5, 2) == pytest.approx((21 + 7 + 1) / 128)
    assert one_sided_p(0, 0) == 1.0 and one_sided_p(0, 4) == 1.0
    assert one_sided_p(2, 2) == pytest.approx(11 / 16)  # a tie is no evidence either way
    # Against scipy's exact binomial test, on counts of the demo's size.
    assert one_sided_p(30, 12) == pytest.approx(0.0040, abs=1e-4)


def test_a_tie_keeps_the_simpler_model():
    simple, costly = _pair(212, 190, gained=6, lost=6)
    choice = compare(simple, costly, 0.05)
    assert (choice.gained, choice.lost, choice.photos) == (6, 6, 212)
    assert not choice.switch
    assert choice.sentence("the head", "fine-tuning").startswith(
        "kept the head: fine-tuning was as accurate of 212 validation photos (6 gained, 6 lost)"
    )


def test_three_photos_better_of_212_is_noise_and_keeps_the_simpler_model():
    """The unseen two-class set: fine-tuning beat the head by 3 validation photos of 212, and
    was 1.25 points worse on test."""
    for gained, lost in ((3, 0), (5, 2), (7, 4)):
        simple, costly = _pair(212, 200, gained, lost)
        choice = compare(simple, costly, 0.05)
        assert costly.sum() - simple.sum() == 3
        assert not choice.switch and choice.p_value >= 0.125, (gained, lost)
    assert compare(*_pair(212, 200, 5, 2), 0.05).sentence("the head", "fine-tuning") == (
        "kept the head: fine-tuning was 3 photos better of 212 validation photos (5 gained, 2 lost), p = 0.23"
    )


def test_a_large_gain_switches_to_the_costlier_model():
    simple, costly = _pair(341, 280, gained=35, lost=8)
    choice = compare(simple, costly, 0.05)
    assert choice.switch and choice.p_value < 1e-4
    assert choice.sentence("the head", "fine-tuning").startswith(
        "kept fine-tuning: 27 photos better than the head of 341 validation photos (35 gained, 8 lost)"
    )
    # The same counts at a stricter alpha than their p-value keep the simpler model.
    assert not compare(simple, costly, choice.p_value).switch


def test_a_costlier_model_that_is_worse_is_never_taken():
    simple, costly = _pair(100, 50, gained=0, lost=30)
    choice = compare(simple, costly, 0.99)
    assert not choice.switch and choice.p_value == 1.0
    assert "30 photos worse" in choice.sentence("a", "b")


def test_whether_any_challenger_could_win_against_so_few_mistakes():
    # Righting k mistakes and making no new one gives p = 0.5 ** k.
    assert not can_ever_switch(4, 0.05) and can_ever_switch(5, 0.05)
    assert not can_ever_switch(0, 0.05)
    assert can_ever_switch(math.ceil(math.log2(1 / 0.01)), 0.01)


def test_a_comparison_reads_back_from_the_metrics_it_logged():
    for counts in ((5, 2), (35, 8)):
        choice = compare(*_pair(341, 280, *counts), 0.05)
        metrics = choice.metrics("diagnostics/x")
        assert set(metrics) == {
            f"diagnostics/x.{k}" for k in ("gained", "lost", "photos", "p_value", "switched")
        }
        again = Comparison.from_metrics(metrics, "diagnostics/x")
        assert again.switch == choice.switch
        assert again.sentence("a", "b") == choice.sentence("a", "b")
    assert Comparison.from_metrics({}, "diagnostics/x") is None


def test_two_models_must_be_compared_on_the_same_photos():
    with pytest.raises(ValueError, match="not the same photos"):
        compare(np.ones(10, bool), np.ones(11, bool), 0.05)
