from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.fine_tuning.nodes import fine_tune


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                fine_tune,
                [
                    "head_model",
                    "validation_features",
                    "image_index",
                    "raw_images",
                    "params:ingestion",
                    "class_names",
                    "params:backbone",
                    "params:fine_tuning",
                    "params:training",
                    "params:augmentation",
                    "params:loading.workers",
                    "params:seed",
                    "params_digest",
                    "params:evaluation.selection_alpha",
                ],
                ["classifier_model", "finetune_metrics", "finetune_history", "fine_tuning_outcome"],
                name="fine_tune",
            ),
        ],
        tags="fine_tuning",
    )
