from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.audit.nodes import (
    compute_centre_features,
    exclude_flagged,
    find_issues,
    plot_cross_split_duplicates,
    plot_label_issues,
    plot_outliers,
)

_GALLERY_INPUTS = ["audit_report", "raw_images", "params:ingestion", "params:audit"]


def create_pipeline(**kwargs) -> Pipeline:
    """After features: the report, its galleries and ``training_index``, which the training,
    fine-tuning and evaluation stages read in place of ``image_index``."""
    return Pipeline(
        [
            node(
                compute_centre_features,
                [
                    "train_features",
                    "validation_features",
                    "test_features",
                    "image_index",
                    "raw_images",
                    "params:ingestion",
                    "feature_store",
                    "params:backbone",
                    "params:features",
                    "params:audit",
                    "params:loading.workers",
                ],
                "audit_centre_features",
                name="compute_centre_features",
            ),
            node(
                find_issues,
                [
                    "train_features",
                    "validation_features",
                    "test_features",
                    "audit_centre_features",
                    "class_names",
                    "params:audit",
                    "params:seed",
                ],
                ["audit_report", "audit_metrics"],
                name="find_issues",
            ),
            node(
                exclude_flagged,
                ["image_index", "audit_report", "params:audit"],
                ["training_index", "audit_excluded"],
                name="exclude_flagged",
            ),
            node(plot_label_issues, _GALLERY_INPUTS, "audit_label_issues_plot", name="plot_label_issues"),
            node(
                plot_cross_split_duplicates,
                _GALLERY_INPUTS,
                "audit_cross_split_duplicates_plot",
                name="plot_cross_split_duplicates",
            ),
            node(plot_outliers, _GALLERY_INPUTS, "audit_outliers_plot", name="plot_outliers"),
        ],
        tags="audit",
    )
