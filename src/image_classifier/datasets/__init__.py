"""Project-specific Kedro datasets: raw image folders, the image index, the feature store, the MLflow model."""

from image_classifier.datasets.arrays import ArraysDataset
from image_classifier.datasets.feature_store import FeatureStore, FeatureStoreDataset
from image_classifier.datasets.image_folder import ImageFolder, ImageFolderDataset, RawFolderError
from image_classifier.datasets.image_index import ImageIndexDataset, index_digest
from image_classifier.datasets.keras_model import StampedModelDataset
from image_classifier.datasets.mlflow_classifier import MlflowClassifierDataset
from image_classifier.datasets.model_registry import (
    ChampionDataset,
    ModelNotFoundError,
    PromotionDataset,
    PyfuncModelDataset,
)
from image_classifier.datasets.nested_run import NestedRunDataset

__all__ = [
    "ArraysDataset",
    "ChampionDataset",
    "ModelNotFoundError",
    "PromotionDataset",
    "PyfuncModelDataset",
    "FeatureStore",
    "FeatureStoreDataset",
    "ImageFolder",
    "ImageFolderDataset",
    "ImageIndexDataset",
    "MlflowClassifierDataset",
    "NestedRunDataset",
    "RawFolderError",
    "StampedModelDataset",
    "index_digest",
]
