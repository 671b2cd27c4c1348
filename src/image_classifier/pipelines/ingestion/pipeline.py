from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.ingestion.nodes import class_names, index_images, ingestion_metrics


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                index_images,
                ["raw_images", "params:split", "params:ingestion", "params:seed"],
                ["image_index", "ingestion_report"],
                name="index_images",
            ),
            node(class_names, "image_index", "class_names", name="class_names"),
            node(ingestion_metrics, "ingestion_report", "ingestion_metrics", name="ingestion_metrics"),
        ],
        tags="ingestion",
    )
