"""MLflow models-from-code entry: logged beside the model and run when the model is loaded."""

import mlflow

from image_classifier.serving import ImageClassifierModel

mlflow.models.set_model(ImageClassifierModel())
