from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.features.nodes import compute_features


def create_pipeline(backbone: str = "params:backbone", **kwargs) -> Pipeline:
    """``backbone``: the input holding the backbone parameters; the sweep feeds each of its
    backbones here under its own namespace."""
    return Pipeline(
        [
            node(
                compute_features,
                [
                    "view_plan",
                    "image_index",
                    "raw_images",
                    "params:ingestion",
                    "feature_store",
                    "class_names",
                    backbone,
                    "params:features",
                    "params:augmentation",
                    "params:loading.workers",
                    "params:seed",
                ],
                ["train_features", "validation_features", "test_features", "feature_metrics"],
                name="compute_features",
            ),
        ],
        tags="features",
    )
