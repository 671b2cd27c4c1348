import pytest
from kedro.config import OmegaConfigLoader

from conftest import PROJECT_ROOT
from image_classifier.config import ParameterError, validate_parameters
from image_classifier.settings import CONFIG_LOADER_ARGS


def test_shipped_parameters_are_valid():
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **CONFIG_LOADER_ARGS)
    params = validate_parameters(loader["parameters"])
    assert params.backbone.name == "mobilenet_v2"
    assert params.raw_images_dir == "data/01_raw/images"


def test_unknown_keys_are_named():
    with pytest.raises(ParameterError, match=r"training\.epoch: unknown parameter"):
        validate_parameters({"training": {"epoch": 3}})


def test_bad_values_are_named_with_the_value():
    with pytest.raises(ParameterError, match=r"fine_tuning\.learning_rate.*-1"):
        validate_parameters({"fine_tuning": {"learning_rate": -1}})
    with pytest.raises(ParameterError, match="split"):
        validate_parameters({"split": {"validation": 0.6, "test": 0.5}})
