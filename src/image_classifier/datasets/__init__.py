"""Project-specific Kedro datasets: raw image folders, the feature store, the MLflow model."""

from image_classifier.datasets.feature_store import FeatureStore, FeatureStoreDataset
from image_classifier.datasets.image_folder import ImageFolder, ImageFolderDataset
from image_classifier.datasets.mlflow_classifier import MlflowClassifierDataset

__all__ = [
    "FeatureStore",
    "FeatureStoreDataset",
    "ImageFolder",
    "ImageFolderDataset",
    "MlflowClassifierDataset",
]
