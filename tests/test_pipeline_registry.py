"""Pipeline wiring, checked without training anything: stages meet only through the catalog, each
node is defined once, and the first stages run end to end on an in-memory catalog, as Kedro's
spaceflights starter tests its pipelines."""

import ast

import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import CSVDataset

from conftest import PROJECT_ROOT, run_session, scratch_project, tracked, write_photo
from image_classifier.config import sweep_namespace
from image_classifier.datasets import ImageFolderDataset
from image_classifier.errors import find_project_error
from image_classifier.pipeline_registry import DEFAULT_STAGES, register_pipelines
from image_classifier.pipelines import augmentation, features, ingestion, sweep, training
from image_classifier.settings import CONFIG_LOADER_ARGS

PIPELINES_DIR = PROJECT_ROOT / "src/image_classifier/pipelines"


@pytest.fixture(scope="module")
def conf():
    return OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **CONFIG_LOADER_ARGS)


@pytest.fixture(scope="module")
def registered(monkeypatch_module):
    monkeypatch_module.chdir(PROJECT_ROOT)  # the sweep's list is read from the project's conf/
    return register_pipelines()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _pipeline_imports(source):
    """The pipeline packages a source file imports, by name ('' for the pipelines package itself)."""
    for statement in ast.walk(ast.parse(source.read_text())):
        names = []
        if isinstance(statement, ast.ImportFrom) and statement.module:
            names = [statement.module] + [f"{statement.module}.{a.name}" for a in statement.names]
        elif isinstance(statement, ast.Import):
            names = [a.name for a in statement.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["image_classifier", "pipelines"]:
                yield parts[2] if len(parts) > 2 else ""


def test_no_pipeline_package_imports_another():
    for package in sorted(p for p in PIPELINES_DIR.iterdir() if (p / "__init__.py").exists()):
        for source in package.glob("*.py"):
            for imported in _pipeline_imports(source):
                assert imported == package.name, f"{source} imports pipelines.{imported}"


def test_library_modules_import_no_pipeline():
    """Only the registry puts stages together; shared code lives in library modules."""
    package = PIPELINES_DIR.parent
    for source in sorted(package.rglob("*.py")):
        if PIPELINES_DIR in source.parents or source.name == "pipeline_registry.py":
            continue
        assert not list(_pipeline_imports(source)), f"{source} imports a pipeline package"


def test_every_stage_reads_only_the_catalog_and_its_parameters(registered, conf):
    """Each stage can run alone (kedro run --pipelines <stage>): whatever it does not make itself
    is a declared dataset or a parameter that exists."""
    catalog = DataCatalog.from_config(conf["catalog"])
    parameters = conf["parameters"]
    for name, pipeline in registered.items():
        for dataset in pipeline.inputs():
            if dataset.startswith("params:"):
                head, *rest = dataset[len("params:") :].split(".")
                value = parameters[head]
                for key in rest:
                    value = value[key]
            elif dataset != "parameters":
                assert dataset in catalog, f"{name} reads {dataset}, which the catalog does not declare"


def test_the_default_pipeline_runs_the_stages_in_order(registered):
    default = registered["__default__"]
    order = [next(t for t in node.tags if t in DEFAULT_STAGES) for node in default.nodes]
    assert sorted(set(order), key=order.index) == list(DEFAULT_STAGES)
    assert set(registered["retraining"].nodes) - set(default.nodes) == set(
        registered["retraining"].only_nodes_with_tags("retraining").nodes
    )


def test_the_sweep_reuses_the_stage_nodes_once_per_backbone():
    per_backbone = features.create_pipeline(backbone="backbone") + training.create_pipeline()
    swept = sweep.create_pipeline(["mobilenet_v2", "keras:Xception"], per_backbone)
    namespaces = {node.namespace for node in swept.nodes if node.namespace}
    assert (
        namespaces
        == {"sweep.mobilenet_v2", "sweep.keras_xception"}
        == {sweep_namespace(n) for n in ("mobilenet_v2", "keras:Xception")}
    )
    default_funcs = {n.name: n.func for n in (features.create_pipeline() + training.create_pipeline()).nodes}
    for namespace in namespaces:
        reused = {n.name.rsplit(".", 1)[1]: n.func for n in swept.nodes if n.namespace == namespace}
        for name, func in default_funcs.items():
            assert reused[name] is func  # the same node definition, not a copy
        compute = next(n for n in swept.nodes if n.name == f"{namespace}.compute_features")
        assert f"{namespace}.backbone" in compute.inputs and "params:features" in compute.inputs
        assert "view_plan" in compute.inputs  # shared with the default stages, not namespaced


def test_ingestion_and_augmentation_run_on_an_in_memory_catalog(tmp_path, conf):
    for split, count in (("train", 3), ("validation", 1), ("test", 1)):
        for label in ("cat", "dog"):
            for i in range(count):
                write_photo(
                    tmp_path / "raw" / split / label / f"{i}.png", seed=hash((split, label, i)) % 10_000
                )
    parameters = conf["parameters"]
    catalog = DataCatalog(
        {
            "raw_images": ImageFolderDataset(str(tmp_path / "raw")),
            # Persisted: the runner frees in-memory data once its last reader has run.
            "image_index": CSVDataset(filepath=str(tmp_path / "image_index.csv")),
            **{f"params:{k}": MemoryDataset(v) for k, v in parameters.items()},
        }
    )
    pipeline = (ingestion.create_pipeline() + augmentation.create_pipeline()).filter(
        node_names=["index_images", "class_names", "ingestion_metrics", "plan_views"]
    )
    outputs = SequentialRunner().run(pipeline, catalog)
    index, plan = catalog.load("image_index"), outputs["view_plan"].load()
    assert sorted(index["split"].value_counts().items()) == [("test", 2), ("train", 6), ("validation", 2)]
    assert outputs["class_names"].load() == ["cat", "dog"]
    views = parameters["augmentation"]["views"]
    assert len(plan) == 6 * views and set(plan["view"]) == set(range(views))
    assert outputs["ingestion_metrics"].load()["diagnostics/ingestion.accepted"]["value"] == 10


def test_a_stage_run_before_the_stages_it_needs_names_them_and_opens_no_run(tmp_path):
    project = scratch_project(tmp_path / "project")
    with tracked(project) as client:
        with pytest.raises(Exception) as raised:
            run_session(project, "evaluation")
        error = find_project_error(raised.value)
        assert error is not None, raised.value
        message = str(error)
        assert "training_index: written by the audit stage (kedro run --pipelines audit)" in message
        assert "classifier_model: written by the fine_tuning stage" in message
        assert "class_names: written by the ingestion stage" in message
        assert "raw_images" not in message  # no stage writes it: the folder has its own check
        experiment = client.get_experiment_by_name("image_classifier")
        assert experiment is None or not client.search_runs([experiment.experiment_id])
