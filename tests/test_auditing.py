"""The audit's heads: out-of-fold probabilities, and the second round fitted without the doubted."""

import numpy as np

from image_classifier.auditing import cleaned_out_of_fold_probabilities, out_of_fold_probabilities


def _two_clusters_with_flips():
    """Two well separated clusters of 40; a third of the first one's images labelled 1."""
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (40, 8)), rng.normal(6, 1, (40, 8))])
    labels = np.repeat([0, 1], 40)
    flipped = np.arange(0, 40, 3)
    labels[flipped] = 1
    return features, labels, flipped


def test_flips_that_hide_each_other_are_doubted_more_once_the_heads_leave_them_out():
    features, labels, flipped = _two_clusters_with_flips()
    first = out_of_fold_probabilities(features, labels, 2, folds=4, seed=0)
    cleaned = cleaned_out_of_fold_probabilities(features, labels, 2, folds=4, seed=0, max_score=0.5)
    given = np.arange(len(labels)), labels
    # In the first round the flips teach the heads that a third of cluster 0 is class 1.
    assert first[given][flipped].min() > 0.15
    assert cleaned[given][flipped].max() < first[given][flipped].min()
    kept = np.setdiff1d(np.arange(len(labels)), flipped)
    assert cleaned[given][kept].min() > 0.5
    np.testing.assert_allclose(cleaned.sum(axis=1), 1.0)


def test_a_class_left_out_of_every_fit_gets_no_probability_and_the_images_are_still_scored():
    features, labels, _ = _two_clusters_with_flips()
    labels = labels.copy()
    labels[40:50] = 2
    probabilities = out_of_fold_probabilities(features, labels, 3, folds=4, seed=0, fit_on=labels != 2)
    assert probabilities.shape == (80, 3)
    assert np.all(probabilities[:, 2] == 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_a_fold_left_with_a_single_trusted_class_is_fitted_on_all_its_images():
    features, labels, _ = _two_clusters_with_flips()
    everyone = out_of_fold_probabilities(features, labels, 2, folds=4, seed=0)
    one_class = out_of_fold_probabilities(features, labels, 2, folds=4, seed=0, fit_on=labels == 0)
    np.testing.assert_array_equal(one_class, everyone)
