"""`shipml export kubeflow`: the retraining pipeline for Kubeflow Pipelines (kfp v2).

DIR/pipeline.py                     the pipeline's Python source: six lightweight components,
                                    one per step, each calling shipml's own step function
                                    (shipml.pipeline.steps) in the project's image and handing
                                    its result on as a JSON string; edit it and run it to
                                    recompile
DIR/shipml_<name>_retrain.yaml      pipeline.py compiled by kfp's compiler, ready to upload

The only module that imports kfp (an optional extra: ``pip install shipml[kubeflow]``), and only
when exporting: the components import shipml inside their functions, so the pipeline's source
needs nothing but kfp to compile, and the image needs nothing but shipml to run.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from shipml import registry
from shipml.deploy.bundle import pulls_from_registry
from shipml.deploy.docker import default_image, resource_name
from shipml.deploy.k8s import with_overrides
from shipml.deploy.output import check_out, out_folder, write_files
from shipml.errors import ConfigError, ShipmlError

if TYPE_CHECKING:
    from shipml.project import Project

SOURCE = "pipeline.py"
PIPELINE_FUNCTION = "retrain"

# The pipeline's source, as users will read and edit it. Components are lightweight Python
# components: kfp copies each function's source into the task's command, so every import a
# step needs happens inside its function.
_SOURCE = Template('''\
"""The retraining pipeline of shipml project '$name' for Kubeflow Pipelines, written by
`shipml export kubeflow`:

    extract -> validate -> train -> evaluate -> gate -> promote

Each step is a lightweight Python component that calls shipml's own step function
(shipml.pipeline.steps) and hands its result to the next step as a JSON string. The gate step
fails when the challenger fails the gate (the decision is recorded in MLflow first), so promote
does not run and the champion stays as it was.

Recompile after editing:  python pipeline.py   (writes $package beside this file)
Run it: upload $package in the Kubeflow Pipelines UI, or
    kfp.Client(host=...).create_run_from_pipeline_package("$package")

Where it runs: every step runs in IMAGE (the serving image `shipml export docker` builds; it
holds shipml and the model's dependencies) and reads the project at the `config` parameter's
path, by default where it was exported from. The steps share the project's folder (shipml.yaml,
the .shipml/ store and the run folders under .shipml/pipeline/), so mount it at that path in
every step, e.g. from a PersistentVolumeClaim with kfp-kubernetes:
    from kfp import kubernetes
    kubernetes.mount_pvc(task, pvc_name="shipml-$slug", mount_path="$root")
As in every lightweight component, each step installs kfp's own runner (kfp==$kfp, no
dependencies) when it starts; with kfp in the image, pass install_kfp_package=False to
dsl.component.
"""

from pathlib import Path

from kfp import compiler, dsl

IMAGE = $image
CONFIG = $config
PIPELINE = $pipeline
PACKAGE = $package_literal
DESCRIPTION = $description


@dsl.component(base_image=IMAGE)
def extract(config: str, data: str) -> str:
    """The new batch: ``data`` (a CSV or Parquet path) when given, else the configured source
    (for SQL with data.watermark_column, only the rows past the last promoted retrain)."""
    import json

    from shipml.pipeline import steps

    return json.dumps(steps.extract(config, data or None).to_dict())


@dsl.component(base_image=IMAGE)
def validate(extracted: str, allow_schema_change: bool) -> str:
    """The batch's schema against the champion's, then training's data checks."""
    import json

    from shipml.pipeline import steps

    previous = steps.Extracted.from_dict(json.loads(extracted))
    result = steps.validate(previous, True if allow_schema_change else None)
    return json.dumps(result.to_dict())


@dsl.component(base_image=IMAGE)
def train(validated: str, time_budget: float, trials: int) -> str:
    """Train on the batch and register the result as the challenger, never the champion."""
    import json

    from shipml.pipeline import steps

    previous = steps.Validated.from_dict(json.loads(validated))
    result = steps.train(previous, time_budget or None, trials if trials >= 0 else None)
    return json.dumps(result.to_dict())


@dsl.component(base_image=IMAGE)
def evaluate(trained: str) -> str:
    """Challenger and champion on the same holdout (paired bootstrap) and on the feedback."""
    import json

    from shipml.pipeline import steps

    result = steps.evaluate(steps.Trained.from_dict(json.loads(trained)))
    return json.dumps(result.to_dict())


@dsl.component(base_image=IMAGE)
def gate(evaluated: str) -> str:
    """The gate's decision, recorded in MLflow; raises (the task fails) when it failed."""
    import json

    from shipml.pipeline import steps

    result = steps.gate(steps.Evaluated.from_dict(json.loads(evaluated)), fail=True)
    print("\\n".join(result.reasons))
    return json.dumps(result.to_dict())


@dsl.component(base_image=IMAGE)
def promote(decision: str) -> str:
    """Move the champion alias to the challenger that passed; servers follow on their own."""
    import json

    from shipml.pipeline import steps

    result = steps.promote(steps.Decision.from_dict(json.loads(decision)))
    return json.dumps(result.to_dict())


@dsl.pipeline(name=PIPELINE, description=DESCRIPTION)
def retrain(
    config: str = CONFIG,
    data: str = "",
    time_budget: float = 0.0,
    trials: int = -1,
    allow_schema_change: bool = False,
) -> str:
    """config: the project's shipml.yaml as the steps see it. data: a CSV or Parquet file to
    retrain on ("" reads the configured source). time_budget: seconds for training (0 takes
    retrain.time_budget_s, else training's). trials: exactly this many search trials (-1 takes
    the config's). allow_schema_change: accept a batch whose columns or types differ from the
    champion's. Returns the promotion as JSON."""
    extracted = extract(config=config, data=data)
    validated = validate(extracted=extracted.output, allow_schema_change=allow_schema_change)
    trained = train(validated=validated.output, time_budget=time_budget, trials=trials)
    evaluated = evaluate(trained=trained.output)
    decision = gate(evaluated=evaluated.output)
    promotion = promote(decision=decision.output)
    for task in (extracted, validated, trained, evaluated, decision, promotion):
        task.set_caching_options(False)  # every run reads new data and changes the registry
    return promotion.output


if __name__ == "__main__":
    compiler.Compiler().compile(retrain, str(Path(__file__).with_name(PACKAGE)))
''')


def _kfp() -> Any:
    try:
        import kfp
    except ImportError:
        raise ShipmlError(
            "exporting a Kubeflow pipeline needs kfp, which is not installed",
            'pip install "shipml[kubeflow]"',
        ) from None
    return kfp


def package_name(name: str) -> str:
    """The compiled pipeline's file name."""
    return f"shipml_{name}_retrain.yaml"


def pipeline_image(project: Project, image: str | None = None) -> str:
    """The image every step runs in: ``image``, else deploy.image, else the name `shipml export
    docker` tags the champion's serving image with."""
    deploy = with_overrides(project.config.deploy, image=image)
    if deploy.image:
        return deploy.image
    baked = not pulls_from_registry(project.config.tracking_uri)
    version = registry.resolve(project.store, registry.CHAMPION) if baked else None
    return default_image(project.config.name, version)


def pipeline_source(project: Project, image: str, kfp_version: str) -> str:
    """The text of pipeline.py for ``project``."""
    name = project.config.name
    package = package_name(name)
    return _SOURCE.substitute(
        name=name,
        slug=resource_name(name),
        root=project.root.as_posix(),
        kfp=kfp_version,
        package=package,
        package_literal=json.dumps(package),
        image=json.dumps(image),
        config=json.dumps(project.path.as_posix()),
        pipeline=json.dumps(resource_name(f"shipml-{name}-retrain")),
        description=json.dumps(f"Retrain shipml project '{name}' and promote what passes the gate"),
    )


def _compile(source: str, package: str) -> str:
    """Load ``source`` as a module and compile its pipeline with kfp's compiler: the YAML is
    exactly what `python pipeline.py` writes."""
    from kfp import compiler

    with tempfile.TemporaryDirectory(prefix="shipml-kubeflow-") as folder:
        path = Path(folder) / SOURCE
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("shipml_kubeflow_pipeline", path)
        if spec is None or spec.loader is None:  # pragma: no cover - a .py path always loads
            raise ConfigError(f"cannot load the generated {SOURCE}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        compiled = Path(folder) / package
        compiler.Compiler().compile(getattr(module, PIPELINE_FUNCTION), str(compiled))
        return compiled.read_text(encoding="utf-8")


def export_kubeflow(project: Project, out: Path, image: str | None = None) -> list[Path]:
    """Write pipeline.py and the compiled pipeline YAML into ``out``; ``image`` replaces
    deploy.image as the steps' image."""
    kfp = _kfp()
    check_out(out, "Kubeflow pipeline")
    source = pipeline_source(project, pipeline_image(project, image), kfp.__version__)
    package = package_name(project.config.name)
    compiled = _compile(source, package)
    out_folder(out, "Kubeflow pipeline")
    return write_files({out / SOURCE: source, out / package: compiled}, "Kubeflow pipeline")
