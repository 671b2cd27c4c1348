from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.retraining.nodes import decide_promotion, score_models


def create_pipeline(**kwargs) -> Pipeline:
    """Promotion nodes only; the registry adds them after the default stages."""
    return Pipeline(
        [
            node(
                score_models,
                [
                    "registered_model",
                    "champion",
                    "image_index",
                    "raw_images",
                    "params:ingestion",
                    "params:evaluation.batch_size",
                ],
                "promotion_scores",
                name="score_models",
            ),
            node(
                decide_promotion,
                [
                    "promotion_scores",
                    "registered_model",
                    "champion",
                    "image_index",
                    # Not "parameters": kedro-mlflow would log every parameter a second time.
                    "params_digest",
                    "params:retraining",
                ],
                "promotion",
                name="decide_promotion",
            ),
        ],
        tags="retraining",
    )
