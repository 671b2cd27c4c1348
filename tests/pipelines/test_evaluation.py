import matplotlib.pyplot as plt
import pandas as pd

from image_classifier.datasets import ImageFolderDataset
from image_classifier.pipelines.evaluation.nodes import (
    per_class_table,
    plot_confusion_matrix,
    plot_misclassified,
    plot_training_curves,
    score,
)

PREDICTIONS = pd.DataFrame(
    {
        "path": list("abcd"),
        "label": ["x", "x", "y", "y"],
        "predicted": ["x", "y", "y", "y"],
        "confidence": [0.9] * 4,
    }
)
FINETUNED = {"final_model": "fine-tuned", "best_epoch": 1, "epochs_run": 1}


def test_scores_and_report():
    metrics, report = score(PREDICTIONS, ["x", "y"], FINETUNED)
    assert metrics["test_accuracy"]["value"] == 0.75 == metrics["finetune.test_accuracy"]["value"]
    assert round(metrics["test_macro_f1"]["value"], 4) == round((2 / 3 + 0.8) / 2, 4)
    assert report["per_class"]["x"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    # Fine-tuning switched off, or beaten by the frozen model: the head's model is final.
    for outcome in (
        {"final_model": "head", "reason": "fine_tuning.enabled is false"},
        {"final_model": "head"},
    ):
        metrics, _ = score(PREDICTIONS, ["x", "y"], outcome)
        assert "finetune.test_accuracy" not in metrics and metrics["test_accuracy"]["value"] == 0.75


def test_plots_are_figures_with_content(tmp_path):
    figure = plot_confusion_matrix(PREDICTIONS, ["x", "y"])
    assert "0.750" in figure.axes[0].get_title()
    assert [t.get_text() for t in figure.axes[0].texts] == ["1", "1", "0", "2"]
    curves = plot_training_curves({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}, {"loss": [0.4]}, FINETUNED)
    assert curves.texts[0].get_text() == "final model: fine-tuned, epoch 1 of 1"
    lines = curves.axes[0].lines
    assert len(lines) == 4 and list(lines[3].get_xdata()) == [3, 3]  # the epoch kept
    # A one-epoch series is drawn as a visible point, and epochs are counted 1, 2, 3.
    assert lines[2].get_marker() == "o" and list(lines[2].get_xdata()) == [3]
    curves.canvas.draw()
    ticks = [t for t in curves.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    beaten = plot_training_curves({"loss": [1.0]}, {"loss": [0.4, 0.5]}, {"final_model": "head"})
    assert "not significantly better" in beaten.texts[0].get_text() and len(beaten.axes[0].lines) == 2
    unstarted = plot_training_curves({"loss": [1.0]}, {}, {"final_model": "head", "epochs_run": 0})
    assert "not started" in unstarted.texts[0].get_text()
    plt.close("all")


def test_per_class_table_has_a_row_per_class():
    _, report = score(PREDICTIONS, ["x", "y"], FINETUNED)
    table = per_class_table(report)
    assert table["class"].tolist() == ["x", "y"]
    assert table.loc[0, ["precision", "recall", "support"]].tolist() == [1.0, 0.5, 2]


def test_gallery_shows_the_most_confident_mistakes_first(tiny_demo):
    raw = ImageFolderDataset(str(tiny_demo)).load()
    photos = [f for f in raw.files if f.startswith("test/")][:4]
    predictions = pd.DataFrame(
        {
            "path": photos,
            "label": ["dress", "dress", "hat", "hat"],
            "predicted": ["dress", "hat", "pants", "dress"],
            "confidence": [0.99, 0.6, 0.8, 0.7],
        }
    )
    figure = plot_misclassified(predictions, raw, {}, thumbnail=48)
    titled = [a.get_title() for a in figure.axes if a.get_images()]
    assert titled == [
        "true: hat\npredicted: pants (0.80)",
        "true: hat\npredicted: dress (0.70)",
        "true: dress\npredicted: hat (0.60)",
    ]
    assert figure.axes[0].get_images()[0].get_array().shape == (48, 48, 3)
    plt.close("all")
