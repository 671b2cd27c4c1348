"""The promotion decision and the fingerprint behind it, as pure functions: every branch."""

import pandas as pd
import pytest

from image_classifier.pipelines.retraining.nodes import decide_promotion
from image_classifier.promotion import params_digest, trained_on, training_fingerprint

INDEX = pd.DataFrame(
    {"path": ["a/1.jpg", "b/2.jpg"], "label": ["a", "b"], "split": ["train", "test"], "sha256": ["1", "2"]}
)
PARAMETERS = {"seed": 42}
CHALLENGER = {"version": "2"}


def _champion(version="1", parameters=None, index=INDEX):
    """A champion whose run recorded the fingerprint of ``parameters`` on ``index``."""
    if version is None:
        return {"version": None, "tags": {}}
    fingerprint = training_fingerprint(index, parameters if parameters is not None else {"seed": 1})
    return {"version": version, "tags": {f"promotion.{k}": v for k, v in fingerprint.items()}}


def _decide(new, old, champion, min_improvement=0.0):
    scores = {"challenger": new, "champion": old}
    retraining = {"min_improvement": min_improvement}
    return decide_promotion(scores, CHALLENGER, champion, INDEX, params_digest(PARAMETERS), retraining)


def test_without_a_champion_the_first_model_is_promoted():
    decision = _decide(0.2, None, _champion(version=None))
    assert decision["promote"] and decision["reason"].startswith("first model")
    assert decision["challenger_version"] == "2" and decision["champion_version"] is None


def test_same_data_and_parameters_as_the_champion_keep_it_even_when_the_score_is_higher():
    decision = _decide(0.9, 0.5, _champion(parameters=PARAMETERS))
    assert not decision["promote"] and "same data and parameters as champion v1" in decision["reason"]


def test_a_challenger_better_by_the_margin_is_promoted():
    decision = _decide(0.80, 0.75, _champion(), min_improvement=0.05)
    assert decision["promote"] and decision["reason"].startswith("better by 0.0500")
    assert decision["decision"] == "promoted"


@pytest.mark.parametrize(
    ("new", "old", "margin"),
    [(0.75, 0.75, 0.0), (0.70, 0.75, 0.0), (0.79, 0.75, 0.05)],
    ids=["tie", "worse", "better-by-less-than-the-margin"],
)
def test_a_tie_a_worse_or_a_barely_better_challenger_keeps_the_champion(new, old, margin):
    decision = _decide(new, old, _champion(), min_improvement=margin)
    assert not decision["promote"] and decision["decision"] == "kept champion"
    assert decision["reason"].startswith(f"not better by {margin}")


def test_the_fingerprint_follows_data_and_model_settings_only():
    base = training_fingerprint(INDEX, PARAMETERS)
    assert training_fingerprint(INDEX, {**PARAMETERS, "loading": {"workers": 8}}) == base
    assert training_fingerprint(INDEX, {**PARAMETERS, "features": {"engine_threads": 1}}) == base
    assert training_fingerprint(INDEX, {"seed": 7})["params_digest"] != base["params_digest"]
    relabelled = INDEX.assign(label=["b", "b"])
    assert training_fingerprint(relabelled, PARAMETERS)["dataset_digest"] != base["dataset_digest"]
    tags = {f"promotion.{k}": v for k, v in base.items()}
    assert trained_on(tags, base) and not trained_on({}, base)
