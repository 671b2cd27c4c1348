import numpy as np
import pandas as pd
import pytest

from image_classifier.augment import AugmentationConfigError, apply_view, build_compose, view_seed
from image_classifier.pipelines.augmentation.nodes import plan_views

TRANSFORMS = [
    {"name": "HorizontalFlip", "params": {"p": 0.5}},
    {"name": "RandomBrightnessContrast", "params": {"p": 1.0}},
]


def test_plan_has_k_views_of_each_training_image_only():
    index = pd.DataFrame(
        {
            "path": ["a", "b", "c"],
            "label": ["x", "y", "x"],
            "split": ["train", "train", "test"],
            "sha256": ["1", "2", "3"],
        }
    )
    plan = plan_views(index, {"views": 3, "transforms": TRANSFORMS})
    assert list(plan.columns) == ["path", "label", "sha256", "view"]
    assert plan.groupby("path")["view"].apply(list).to_dict() == {"a": [0, 1, 2], "b": [0, 1, 2]}


@pytest.mark.parametrize(
    ("transforms", "message"),
    [
        (
            [{"name": "HorizontalFlap"}],
            r"transforms\[0\] \(HorizontalFlap\): albumentations has no transform",
        ),
        (
            [TRANSFORMS[0], {"name": "Blur", "params": {"blur_limt": 3}}],
            r"transforms\[1\] \(Blur\): invalid params",
        ),
    ],
)
def test_bad_transforms_name_the_entry(transforms, message):
    with pytest.raises(AugmentationConfigError, match=message):
        build_compose(transforms)


def test_views_are_reproducible_and_view_zero_is_plain():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    seed = view_seed(42, "abc", 1)
    first = apply_view(build_compose(TRANSFORMS), image, seed, 1)
    again = apply_view(build_compose(TRANSFORMS), image, seed, 1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, image)
    assert apply_view(build_compose(TRANSFORMS), image, seed, 0) is image
    assert view_seed(42, "abc", 1) != view_seed(42, "abc", 2) != view_seed(43, "abc", 2)
