import numpy as np
import pandas as pd
import pytest

from image_classifier.augment import AugmentationConfigError, apply_view, build_compose, view_seed
from image_classifier.datasets import ImageFolderDataset
from image_classifier.pipelines.augmentation.nodes import plan_views, preview_views
from image_classifier.pipelines.ingestion.nodes import index_images

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


def test_preview_shows_one_image_per_class_with_its_views(tiny_demo):
    raw = ImageFolderDataset(str(tiny_demo)).load()
    index, _ = index_images(raw, {"validation": 0.1, "test": 0.1}, {}, seed=0)
    augmentation = {"views": 3, "transforms": [{"name": "HorizontalFlip", "params": {"p": 1.0}}]}
    figure = preview_views(plan_views(index, augmentation), raw, {}, {"input_size": 64}, augmentation, seed=0)
    axes = np.array(figure.axes).reshape(3, 3)
    assert [a.get_ylabel() for a in axes[:, 0]] == ["dress", "hat", "pants"]
    assert [a.get_title() for a in axes[0]] == ["plain (view 0)", "view 1", "view 2"]
    plain, flipped = (axes[0][v].get_images()[0].get_array() for v in (0, 1))
    np.testing.assert_array_equal(np.asarray(flipped), np.asarray(plain)[:, ::-1])
