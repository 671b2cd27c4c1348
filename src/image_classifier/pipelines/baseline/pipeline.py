from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.baseline.nodes import train_baseline


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                train_baseline,
                [
                    "image_index",
                    "raw_images",
                    "params:ingestion",
                    "class_names",
                    "params:baseline",
                    "params:augmentation",
                    "params:loading.workers",
                    "params:seed",
                ],
                ["baseline_model", "baseline_metrics", "baseline_history"],
                name="train_baseline",
            ),
        ],
        tags="baseline",
    )
