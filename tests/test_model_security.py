"""A model file is loaded only when every type in it is one that shipml's model families save,
named one by one in shipml.models.trusted: a crafted file (registered by anyone who can write to
the store, so its checksum matches) that names a function or class which deletes, reads or writes
files is refused by name before anything in it runs, and the command exits 2 with one line."""

from __future__ import annotations

import builtins
import functools
import gc
import operator
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.io
import sklearn.datasets
from numpy.lib import _datasource
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from shipml import Project, registry
from shipml.config import FeaturesConfig
from shipml.data.schema import ColumnInfo, Schema
from shipml.deploy import bundle
from shipml.errors import RegistryError
from shipml.features import build_preprocessor
from shipml.models import keras_backend
from shipml.models.bagged import BaggedEnsemble
from shipml.models.catalog import CATALOG, TARGET_TRANSFORM, Family, deep_available
from shipml.models.trusted import TRUSTED_TYPES
from tests.chaos.figures import record
from tests.conftest import run_cli
from tests.serving_helpers import SHIPML
from tests.test_store_safety import register_file, registered_project

# -- the list is what the families save, no more and no less ------------------------------------

# Small enough to fit in a moment; every family still saves every kind of object it keeps.
SMALL = {
    "n_estimators": 4,
    "iterations": 4,
    "max_iter": 4,
    "max_epochs": 1,
    "blocks": 1,
    "dense_units": 8,
}


def _frame(n: int = 60) -> pd.DataFrame:
    """Every column role the preprocessor handles, and a derived feature."""
    rng = np.random.default_rng(0)
    city = rng.choice(["north", "south", "east"], n).astype(object)
    city[::7] = None
    return pd.DataFrame(
        {
            "income": rng.normal(size=n),
            "size": rng.integers(1, 5, n).astype(float),
            "active": rng.integers(0, 2, n).astype(float),
            "city": city,
            "signup": pd.date_range("2024-01-01", periods=n, freq="D"),
        }
    )


def _schema(task: str, columns: dict[str, str], derived: dict[str, str]) -> Schema:
    infos = {name: ColumnInfo(name, role, "float64") for name, role in columns.items()}  # type: ignore[arg-type]
    return Schema("target", task, infos, derived=derived)  # type: ignore[arg-type]


def _tables(task: str, images: bool) -> tuple[Schema, pd.DataFrame, pd.Series]:
    if images:  # 8x8 digits, one column per pixel, as an image data set becomes a table
        X_all, y_all = load_digits(return_X_y=True)
        X = pd.DataFrame(X_all[:60], columns=[f"pixel_{i}" for i in range(64)])
        return _schema(task, dict.fromkeys(X.columns, "numeric"), {}), X, pd.Series(y_all[:60])
    X = _frame()
    roles = {"income": "numeric", "size": "numeric", "active": "boolean"}
    schema = _schema(
        task, {**roles, "city": "categorical", "signup": "datetime"}, {"per": "income / size"}
    )
    rng = np.random.default_rng(1)
    if task == "classification":
        return schema, X, pd.Series(rng.choice(["no", "yes"], len(X)))
    return schema, X, pd.Series(np.abs(rng.normal(size=len(X))) * 10)


def _saved_types(task: str, family: Family, params: dict[str, Any], stacked: bool) -> list[str]:
    """The types skops does not trust by default in the model training registers for
    ``family`` (an ensemble of fitted parts behind their preprocessor; ``stacked``: with a
    second layer over it)."""
    schema, X, y = _tables(task, family.images_only)
    preprocessor = build_preprocessor(schema, FeaturesConfig()).fit(X, y)
    Xt = np.asarray(preprocessor.transform(X), dtype=np.float64)
    names = set(family.defaults) | ({"max_epochs"} if family.optional else set())
    small = {k: v for k, v in SMALL.items() if k in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = family.build(0, {**small, **params}).fit(Xt, y)
        stack = None
        if stacked:
            layer = np.asarray(estimator.predict_proba(Xt)[:, 1:], dtype=np.float64)
            second = LogisticRegression().fit(np.hstack([Xt, layer]), y)
            stack = {"name": "stack", "inputs": [family.name], "parts": [(0, second)]}
    classes = np.unique(y) if task == "classification" else None
    model = BaggedEnsemble(
        task, [preprocessor], [(family.name, 0, estimator)], {family.name: 1.0}, classes, 0.5, stack
    )
    sio = registry.serializer()
    return list(sio.get_untrusted_types(data=sio.dumps(model)))


@pytest.mark.slow
def test_the_trusted_types_are_exactly_those_the_families_save() -> None:
    saved_by: dict[str, set[str]] = {}
    for task, families in CATALOG.items():
        for family in families.values():
            if not family.available:
                continue
            variants: list[tuple[str, dict[str, Any], bool]] = [(family.name, {}, False)]
            if task == "regression" and family.target_transform:
                variants.append(
                    (f"{family.name} on a log target", {TARGET_TRANSFORM: "log"}, False)
                )
            if task == "classification" and family.name == "lightgbm":
                variants.append(("lightgbm under a second layer", {}, True))
            for what, params, stacked in variants:
                for type_name in _saved_types(task, family, params, stacked):
                    saved_by.setdefault(type_name, set()).add(f"{task} {what}")
    unlisted = {t: sorted(saved_by[t]) for t in sorted(set(saved_by) - TRUSTED_TYPES)}
    assert not unlisted, f"families save types missing from TRUSTED_TYPES: {unlisted}"
    # Without the deep extra (PyTorch) the networks cannot be saved here to be checked.
    deep = ("shipml.models.torch_", "shipml.models.keras_")
    unavailable = set() if deep_available() else {t for t in TRUSTED_TYPES if t.startswith(deep)}
    stale = sorted(TRUSTED_TYPES - set(saved_by) - unavailable)
    assert not stale, f"TRUSTED_TYPES names types no family saves: {stale}"


# -- crafted files -------------------------------------------------------------------------------


def _data_source(victim: Path) -> Any:
    """numpy's DataSource, whose clean-up deletes its folder when it is a temporary one."""
    source = _datasource.DataSource.__new__(_datasource.DataSource)
    source.__dict__.update({"_destpath": str(victim / "folder"), "_istmpdest": True})
    return source


def _transformer(func: Callable[..., Any] | None = None, **kw_args: Any) -> FunctionTransformer:
    return FunctionTransformer(func=func, kw_args=kw_args or None)


# (what, the object a crafted pipeline holds, the type its file names)
CRAFTED: list[tuple[str, Callable[[Path], Any], str]] = [
    (
        "numpy DataSource that deletes a folder",
        lambda v: _transformer(source=_data_source(v)),
        "numpy.lib.npyio.DataSource",
    ),
    ("eval", lambda v: _transformer(builtins.eval), "builtins.eval"),
    ("exec", lambda v: _transformer(builtins.exec), "builtins.exec"),
    ("getattr", lambda v: _transformer(builtins.getattr), "builtins.getattr"),
    ("open", lambda v: _transformer(builtins.open, file=str(v / "file"), mode="w"), "io.open"),
    ("os.system", lambda v: _transformer(os.system), "posix.system"),
    ("subprocess", lambda v: _transformer(subprocess.check_call), "subprocess.check_call"),
    ("shutil.rmtree", lambda v: _transformer(shutil.rmtree), "shutil.rmtree"),
    (
        "scikit-learn's clear_data_home",
        lambda v: _transformer(sklearn.datasets.clear_data_home),
        "sklearn.datasets._base.clear_data_home",
    ),
    ("numpy.load", lambda v: _transformer(np.load, allow_pickle=True), "numpy.load"),
    ("numpy.save", lambda v: _transformer(np.save), "numpy.save"),
    ("scipy savemat", lambda v: _transformer(scipy.io.savemat), "scipy.io.matlab._mio.savemat"),
    ("attrgetter", lambda v: _transformer(operator.attrgetter("__class__")), "operator.attrgetter"),
    (
        "partial",
        lambda v: _transformer(functools.partial(shutil.rmtree, str(v / "folder"))),
        "functools.partial",
    ),
    (
        "shipml's own loader of Python files",
        lambda v: _transformer(keras_backend.load_user_module),
        "shipml.models.keras_backend.load_user_module",
    ),
]


DATA_SOURCE = re.escape("untrusted type 'numpy.lib.npyio.DataSource'")


def victim_files(folder: Path) -> Path:
    (folder / "folder").mkdir(parents=True)
    (folder / "folder" / "keep.txt").write_text("keep me")
    (folder / "file").write_text("keep me too")
    return folder


def untouched(victim: Path) -> bool:
    gc.collect()  # a DataSource deletes its folder when it is collected
    return (victim / "folder" / "keep.txt").is_file() and (
        victim / "file"
    ).read_text() == "keep me too"


def crafted_file(make: Callable[[Path], Any], victim: Path) -> bytes:
    step = make(victim)
    try:
        return bytes(registry.serializer().dumps(Pipeline([("step", step)])))
    finally:
        for value in (step.kw_args or {}).values():  # the test's own DataSource deletes nothing
            if isinstance(value, _datasource.DataSource):
                value._istmpdest = False


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return registered_project(tmp_path_factory.mktemp("model-security"))


@pytest.mark.chaos
def test_crafted_model_files_are_refused_by_the_type_they_name(
    project: Path, tmp_path: Path
) -> None:
    store = Project.load(project).store
    failures = []
    for what, make, type_name in CRAFTED:
        victim = victim_files(tmp_path / what.replace(" ", "-"))
        version = register_file(project, crafted_file(make, victim))
        result = run_cli(
            "predict", project.parent / "new.csv", "--out", tmp_path / "out.csv",
            "--version", version, "-c", project,
        )  # fmt: skip
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        try:
            registry.load(store, version)
            refused = "loaded"
        except RegistryError as err:
            refused = err.message
        if not (
            result.exit_code == 2
            and len(errors) == 1
            and f"version {version}: the model file holds an untrusted type '{type_name}'"
            in errors[0]
            and "Traceback" not in result.all
            and f"untrusted type '{type_name}'" in refused
        ):
            failures.append(f"{what}: exit {result.exit_code}, {result.all.strip()[-300:]!r}")
        if not untouched(victim):
            failures.append(f"{what}: the victim files were changed")
    assert not failures, "\n".join(failures)
    record("crafted model files", "kinds refused before anything in them ran", len(CRAFTED))


@pytest.mark.chaos
def test_a_crafted_model_file_deletes_nothing_from_a_real_shipml_predict(
    project: Path, tmp_path: Path
) -> None:
    _, make, type_name = CRAFTED[0]
    victim = victim_files(tmp_path / "victim")
    version = register_file(project, crafted_file(make, victim))
    done = subprocess.run(
        [SHIPML, "predict", str(project.parent / "new.csv"), "--out", str(tmp_path / "out.csv"),
         "--version", str(version), "-c", str(project)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"untrusted type '{type_name}'" in errors[0], done.stderr
    assert untouched(victim)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.chaos
def test_an_export_reads_the_types_of_a_crafted_file_and_refuses_it(
    project: Path, tmp_path: Path
) -> None:
    victim = victim_files(tmp_path / "victim")
    crafted = tmp_path / "model.skops"
    crafted.write_bytes(crafted_file(CRAFTED[0][1], victim))
    with pytest.raises(RegistryError, match=DATA_SOURCE):
        bundle._needs(crafted)
    store = Project.load(project).store
    version = register_file(project, crafted.read_bytes())
    registry.promote(store, version)
    try:
        with pytest.raises(RegistryError, match=DATA_SOURCE):
            bundle.champion(Project.load(project))
    finally:
        registry.promote(store, 1)
    assert untouched(victim)


def test_a_file_skops_cannot_read_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    version = register_file(project, b"PK\x03\x04 not a model")
    with pytest.raises(RegistryError, match=f"version {version}: the model file cannot be loaded"):
        registry.load(Project.load(project).store, version)


@pytest.mark.chaos
def test_a_network_in_a_crafted_file_imports_no_python_file_outside_the_project(
    project: Path, tmp_path: Path
) -> None:
    """A Keras network keeps the path of its build_model file, imported on load to find custom
    layers when the network does not load without them: a crafted file names a script
    elsewhere and makes its network unreadable."""
    from shipml.models.keras_model import KerasClassifier

    canary = tmp_path / "canary"
    script = tmp_path / "elsewhere" / "build.py"
    script.parent.mkdir()
    script.write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    net = KerasClassifier(build_model=str(script))
    net.__dict__["model_keras_bytes_"] = np.frombuffer(b"not a keras file", dtype=np.uint8)
    data = bytes(registry.serializer().dumps(Pipeline([("model", net)])))
    version = register_file(project, data)
    result = run_cli(
        "predict", project.parent / "new.csv", "--out", tmp_path / "out.csv",
        "--version", version, "-c", project,
    )  # fmt: skip
    assert result.exit_code == 2, result.all
    assert "Traceback" not in result.all
    assert "outside the project folder" in result.stderr.splitlines()[0], result.stderr
    assert not canary.exists()
    record("crafted model files", "kinds refused before anything in them ran", 1)
