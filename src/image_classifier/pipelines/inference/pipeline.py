from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.inference.nodes import classify_folder


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                classify_folder,
                ["inference_model", "inference_images", "params:ingestion", "params:inference"],
                ["predictions", "inference_metrics"],
                name="classify_folder",
            )
        ],
        tags="inference",
    )
