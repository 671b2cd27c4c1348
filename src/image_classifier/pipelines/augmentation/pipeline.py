from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.augmentation.nodes import plan_views, preview_views


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(plan_views, ["image_index", "params:augmentation"], "view_plan", name="plan_views"),
            node(
                preview_views,
                [
                    "view_plan",
                    "raw_images",
                    "params:ingestion",
                    "params:backbone",
                    "params:augmentation",
                    "params:seed",
                ],
                "augmentation_preview",
                name="preview_views",
            ),
        ],
        tags="augmentation",
    )
