from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.training.nodes import train_head


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                train_head,
                [
                    "train_features",
                    "validation_features",
                    "test_features",
                    "image_index",
                    "class_names",
                    "params:training",
                    "params:seed",
                ],
                ["head_model", "head_metrics", "head_history"],
                name="train_head",
            ),
        ],
        tags="training",
    )
