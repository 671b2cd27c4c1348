import matplotlib.pyplot as plt
import pandas as pd

from image_classifier.pipelines.evaluation.nodes import plot_confusion_matrix, plot_training_curves, score

PREDICTIONS = pd.DataFrame(
    {
        "path": list("abcd"),
        "label": ["x", "x", "y", "y"],
        "predicted": ["x", "y", "y", "y"],
        "confidence": [0.9] * 4,
    }
)


def test_scores_and_report():
    metrics, report = score(PREDICTIONS, ["x", "y"], {"enabled": True})
    assert metrics["test_accuracy"]["value"] == 0.75 == metrics["finetune.test_accuracy"]["value"]
    assert round(metrics["test_macro_f1"]["value"], 4) == round((2 / 3 + 0.8) / 2, 4)
    assert report["per_class"]["x"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    metrics, _ = score(PREDICTIONS, ["x", "y"], {"enabled": False})
    assert "finetune.test_accuracy" not in metrics


def test_plots_are_figures_with_content(tmp_path):
    figure = plot_confusion_matrix(PREDICTIONS, ["x", "y"])
    assert "0.750" in figure.axes[0].get_title()
    assert [t.get_text() for t in figure.axes[0].texts] == ["1", "1", "0", "2"]
    curves = plot_training_curves({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}, {"loss": [0.4]})
    assert len(curves.axes[0].lines) == 3
    plt.close("all")
