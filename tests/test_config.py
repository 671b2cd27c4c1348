import pytest
from kedro.config import OmegaConfigLoader

from conftest import PROJECT_ROOT
from image_classifier.config import (
    CATALOG_SETTINGS,
    ParameterError,
    Parameters,
    check_catalog_settings,
    model_settings,
    validate_parameters,
)
from image_classifier.settings import CONFIG_LOADER_ARGS


def _conf(env=None, **runtime_params):
    return OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"), env=env, runtime_params=runtime_params, **CONFIG_LOADER_ARGS
    )


def _leaves(tree, prefix=""):
    """Dotted names of every setting, descending into sections but not into list items."""
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("params", "weights"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_shipped_parameters_are_the_schema_defaults():
    """config.py holds every default; the YAML documents the same values. Either drifting fails."""
    shipped = _conf()["parameters"]
    assert validate_parameters(shipped) == Parameters()
    # ... and documents every setting, except those the catalog reads from globals.yml.
    documented = set(_leaves(shipped))
    schema = set(_leaves(Parameters().model_dump())) - set(CATALOG_SETTINGS)
    assert documented == schema


def test_the_fast_environment_changes_three_keys_and_keeps_the_rest_from_base():
    fast = validate_parameters(_conf(env="fast")["parameters"])
    assert fast.backbone.name == "efficientnet_lite1"
    assert fast.fine_tuning.enabled is False and fast.audit.centre_crop == 1.0
    # Soft merge: the sections' other keys are conf/base's.
    expected = Parameters().model_dump()
    expected["backbone"].update(name="efficientnet_lite1", input_size=240)  # null: its native size
    expected["fine_tuning"]["enabled"] = False
    expected["audit"]["centre_crop"] = 1.0
    assert fast.model_dump() == expected


def test_the_catalog_settings_have_one_home_in_globals():
    conf = _conf()
    globals_ = conf["globals"]
    assert globals_["raw_images_dir"] == "data/01_raw/images"
    assert globals_["inference"]["model_uri"] == "models:/image_classifier@champion"
    catalog = conf["catalog"]
    assert catalog["raw_images"]["path"] == globals_["raw_images_dir"]
    assert catalog["image_index"]["source"] == globals_["raw_images_dir"]
    assert catalog["inference_images"]["path"] == globals_["inference_dir"]
    assert catalog["inference_model"]["model_uri"] == globals_["inference"]["model_uri"]
    # --params wins over globals.yml, in the catalog and in the parameters alike.
    overridden = _conf(raw_images_dir="elsewhere", inference={"model_uri": "models:/x/1"})
    assert overridden["catalog"]["raw_images"]["path"] == "elsewhere"
    assert overridden["catalog"]["inference_model"]["model_uri"] == "models:/x/1"


def test_a_catalog_setting_in_a_parameters_file_is_refused():
    check_catalog_settings({"raw_images_dir": "x"}, {"raw_images_dir": "x"})  # from --params: fine
    with pytest.raises(ParameterError, match=r"raw_images_dir.*globals\.yml"):
        check_catalog_settings({"raw_images_dir": "x"}, {})
    with pytest.raises(ParameterError, match=r"inference\.model_uri"):
        check_catalog_settings({"inference": {"model_uri": "models:/x/1", "batch_size": 4}}, {})


def test_unknown_keys_are_named():
    with pytest.raises(ParameterError, match=r"training\.epoch: unknown parameter"):
        validate_parameters({"training": {"epoch": 3}})
    with pytest.raises(ParameterError, match=r"features\.workers: unknown parameter"):
        validate_parameters({"features": {"workers": 3}})  # now loading.workers, for every loader


def test_bad_values_are_named_with_the_value():
    with pytest.raises(ParameterError, match=r"fine_tuning\.learning_rate.*-1"):
        validate_parameters({"fine_tuning": {"learning_rate": -1}})
    with pytest.raises(ParameterError, match="split"):
        validate_parameters({"split": {"validation": 0.6, "test": 0.5}})
    with pytest.raises(
        ParameterError, match=r"features\.engine_streams: 2 needs features\.engine onnxruntime"
    ):
        validate_parameters({"features": {"engine": "openvino", "engine_streams": 2}})
    with pytest.raises(
        ParameterError, match=r"fine_tuning\.train_size_epochs: .*set fine_tuning\.train_size"
    ):
        validate_parameters({"fine_tuning": {"train_size_epochs": 2}})


def test_a_null_fine_tuning_rate_is_decided_by_the_number_of_training_photos():
    auto = validate_parameters({}).fine_tuning
    assert auto.learning_rate is None
    assert auto.peak_learning_rate(200) == auto.peak_learning_rate(999) == 1e-4
    assert auto.peak_learning_rate(1000) == auto.peak_learning_rate(3068) == 3e-4
    chosen = validate_parameters({"fine_tuning": {"learning_rate": 5e-5}}).fine_tuning
    assert chosen.peak_learning_rate(200) == chosen.peak_learning_rate(3068) == 5e-5


def test_a_null_label_smoothing_is_decided_by_the_number_of_training_photos():
    auto = validate_parameters({}).training
    assert auto.label_smoothing is None
    assert auto.smoothing(200) == auto.smoothing(999) == 0.0
    assert auto.smoothing(1000) == auto.smoothing(3068) == 0.1
    chosen = validate_parameters({"training": {"label_smoothing": 0.0}}).training
    assert chosen.smoothing(200) == chosen.smoothing(3068) == 0.0


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", float("inf")])
def test_every_float_parameter_must_be_finite(value):
    # inf passes "> 0" and used to train to NaN losses and register a model at chance accuracy;
    # --params gives strings, YAML gives floats: both are refused.
    with pytest.raises(ParameterError, match=r"training\.learning_rate: Input should be a finite number"):
        validate_parameters({"training": {"learning_rate": value}})
    with pytest.raises(ParameterError, match=r"retraining\.min_improvement"):
        validate_parameters({"retraining": {"min_improvement": value}})


def test_model_settings_leave_out_what_does_not_change_the_model():
    base = model_settings(Parameters())
    same = [
        {"loading": {"workers": 7}},
        {"ingestion": {"workers": 9}},
        {"features": {"engine_threads": 1, "batch_size": 8}},
        {"fine_tuning": {"strategy": "default"}},
        {"backbone": {"cache_dir": "/elsewhere"}},
        {"evaluation": {"batch_size": 3}},
        {"retraining": {"min_improvement": 0.5}},
        {"sweep": {"throughput_images": 0}},
        {"raw_images_dir": "/photos"},
        {"audit": {"label_max_score": 0.1, "neighbours": 5}},  # report only: nothing excluded
    ]
    for change in same:
        assert model_settings(validate_parameters(change)) == base, change
    different = [
        {"seed": 1},
        {"training": {"learning_rate": 0.01}},
        {"fine_tuning": {"unfreeze_layers": 10}},
        {"augmentation": {"views": 2}},
        {"backbone": {"input_size": 160}},
        {"features": {"storage": "fp16"}},
        {"split": {"test": 0.2}},
        {"audit": {"exclude": ["outliers"]}},
    ]
    for change in different:
        assert model_settings(validate_parameters(change)) != base, change
    # Once images are left out, the thresholds decide which.
    excluding = {"audit": {"exclude": ["outliers"]}}
    assert model_settings(validate_parameters(excluding)) != model_settings(
        validate_parameters({"audit": {"exclude": ["outliers"], "outlier_threshold": 0.5}})
    )
