from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.evaluation.nodes import (
    choose_tta,
    model_for_registry,
    per_class_table,
    plot_confusion_matrix,
    plot_misclassified,
    plot_training_curves,
    predict_test,
    score,
)

# What every node that runs the classifier on a split reads.
_SCORING_INPUTS = (
    "classifier_model",
    "image_index",
    "raw_images",
    "params:ingestion",
    "class_names",
    "params:backbone",
    "params:evaluation",
    "params:loading.workers",
    "params_digest",
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                choose_tta,
                [*_SCORING_INPUTS],
                ["tta_mode", "tta_metrics"],
                name="choose_tta",
            ),
            node(predict_test, [*_SCORING_INPUTS, "tta_mode"], "test_predictions", name="predict_test"),
            node(
                score,
                ["test_predictions", "class_names", "fine_tuning_outcome"],
                ["evaluation_metrics", "classification_report"],
                name="score",
            ),
            node(
                plot_confusion_matrix,
                ["test_predictions", "class_names"],
                "confusion_matrix_plot",
                name="plot_confusion_matrix",
            ),
            node(per_class_table, "classification_report", "per_class_metrics", name="per_class_table"),
            node(
                plot_misclassified,
                ["test_predictions", "raw_images", "params:ingestion"],
                "misclassified_plot",
                name="plot_misclassified",
            ),
            node(
                plot_training_curves,
                ["head_history", "finetune_history", "fine_tuning_outcome"],
                "training_curves_plot",
                name="plot_training_curves",
            ),
            node(
                model_for_registry,
                [
                    "classifier_model",
                    "image_index",
                    "class_names",
                    "params:backbone",
                    "params:ingestion",
                    "params_digest",
                    "tta_mode",
                ],
                "registered_model",
                name="register_model",
            ),
        ],
        tags="evaluation",
    )
