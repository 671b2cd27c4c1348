from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.features.nodes import compute_features


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                compute_features,
                [
                    "view_plan",
                    "image_index",
                    "raw_images",
                    "feature_store",
                    "class_names",
                    "params:backbone",
                    "params:features",
                    "params:augmentation",
                    "params:seed",
                ],
                ["train_features", "validation_features", "test_features", "feature_metrics"],
                name="compute_features",
            ),
        ],
        tags="features",
    )
