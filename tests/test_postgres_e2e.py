"""`shipml train` end to end from a real PostgreSQL table (CI starts the server; see .ci/run)."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy
import yaml

from shipml.data.sources import resolve_sql_url
from shipml.project import Project
from tests.conftest import breast_cancer_frame, make_project, run_cli, wine_frame
from tests.data.test_sources_postgres import _postgres_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_and_predict_from_postgres(tmp_path: Path) -> None:
    url = _postgres_url()
    table = f"wines_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(resolve_sql_url(url, tmp_path))
    try:
        wine_frame().to_sql(table, engine, index=False)
        config = tmp_path / "shipml.yaml"
        query = f"SELECT * FROM {table}"
        init = run_cli("init", url, "--query", query, "--target", "cultivar", "--out", config)
        assert init.exit_code == 0, init.all
        raw = yaml.safe_load(config.read_text())
        assert raw["data"] == {"url": url, "query": query}
        raw["training"].update(cv=3, models=["random_forest"], trials=2)
        config.write_text(yaml.safe_dump(raw))
        trained = run_cli("train", "-c", config)
        assert trained.exit_code == 0, trained.all
        project = Project.load(config)
        run = project.store.client.get_run(project.models()[0].run_id)
        assert run.data.params["n_rows"] == str(len(wine_frame()))
        scored = project.predict(wine_frame().drop(columns="cultivar").head(5))
        assert scored["prediction"].notna().all()
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def _readme_backend_store_uri() -> sqlalchemy.engine.URL:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    match = re.search(r"mlflow server --backend-store-uri (\S+)", readme)
    assert match, "README.md shows no `mlflow server --backend-store-uri` line"
    return sqlalchemy.engine.make_url(match.group(1))


def _new_database(tmp_path: Path) -> tuple[str, sqlalchemy.engine.Engine]:
    """A fresh database on the test server: (its plain postgresql:// URL, an admin engine)."""
    database = f"shipml_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(
        resolve_sql_url(_postgres_url(), tmp_path), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
    plain = sqlalchemy.engine.make_url(_postgres_url()).set(database=database)
    assert plain.drivername == "postgresql"
    return plain.render_as_string(hide_password=False), admin


def test_plain_postgresql_tracking_uri(tmp_path: Path) -> None:
    """tracking_uri: the database itself, as a plain postgresql:// URL (and postgres://), on a
    team's setup: two machines (folders) share runs and registry through it and the models
    through artifact_location; without artifact_location, train says where they stay."""
    url, admin = _new_database(tmp_path)
    database = url.rsplit("/", 1)[1]
    shared = tmp_path / "shared-artifacts"
    try:

        def edit(raw: dict) -> None:
            raw["training"].update(models=["logistic_regression"], trials=0, cv=2)
            raw["tracking_uri"] = url
            raw["artifact_location"] = str(shared)

        trainer = make_project(tmp_path / "trainer", breast_cancer_frame(), "diagnosis", edit)
        trained = run_cli("train", "-c", trainer)
        assert trained.exit_code == 0, trained.all
        assert "artifact_location" not in trained.all
        assert not (trainer.parent / ".shipml" / "mlflow.db").exists()
        assert list(shared.rglob("MLmodel")) and list(shared.rglob("model.fast"))

        other = tmp_path / "other"
        other.mkdir()
        config = other / "shipml.yaml"
        raw = yaml.safe_load(trainer.read_text())
        raw["tracking_uri"] = "postgres://" + url.split("://", 1)[1]  # the other spelling
        config.write_text(yaml.safe_dump(raw))
        listed = run_cli("models", "-c", config)
        assert listed.exit_code == 0 and "champion" in listed.output, listed.all
        scored = run_cli(
            "predict", trainer.parent / "new.csv", "--out", other / "scored.csv", "-c", config
        )
        assert scored.exit_code == 0, scored.all
        assert len(pd.read_csv(other / "scored.csv")) == 40

        # The same database for a second project, without artifact_location: said, once.
        def unshared(raw: dict) -> None:
            edit(raw)
            raw.pop("artifact_location")
            raw["name"] = "unshared"

        alone = make_project(tmp_path / "alone", breast_cancer_frame(), "diagnosis", unshared)
        trained = run_cli("train", "-c", alone)
        assert trained.exit_code == 0, trained.all
        warnings = [line for line in trained.all.splitlines() if "artifact_location" in line]
        assert len(warnings) == 1 and "warning:" in warnings[0]
        assert list((alone.parent / ".shipml" / "artifacts").rglob("MLmodel"))
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()


def test_shared_tracking_on_an_mlflow_server_backed_by_postgres(tmp_path: Path) -> None:
    """Train on one machine, serve on another: two project folders that share only
    shipml.yaml's tracking_uri, an `mlflow server` whose store is PostgreSQL."""
    from tests.serving_helpers import Server
    from tests.test_deploy_export import _mlflow_server, _predict_like_the_project

    database = f"mlflow_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(
        resolve_sql_url(_postgres_url(), tmp_path), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
    # The backend URL as the README writes it for `mlflow server` (its scheme and driver), on
    # this test's server and database: a URL it shows that fails, fails here.
    shown = _readme_backend_store_uri()
    plain = sqlalchemy.engine.make_url(_postgres_url()).set(database=database)
    backend = plain.set(drivername=shown.drivername).render_as_string(hide_password=False)
    try:
        with _mlflow_server(tmp_path / "mlflow", backend) as tracking:

            def edit(raw: dict) -> None:
                raw["training"].update(models=["lightgbm"], trials=0, cv=2, ensemble=False)
                raw["tracking_uri"] = tracking
                raw["serving"] = {"reload_interval_s": 0.5}

            trainer = make_project(tmp_path / "trainer", breast_cancer_frame(), "diagnosis", edit)
            assert run_cli("train", "-c", trainer).exit_code == 0
            assert not (trainer.parent / ".shipml" / "mlflow.db").exists()

            # The other machine: the same config, no data, no store of its own.
            server_dir = tmp_path / "server"
            server_dir.mkdir()
            served = server_dir / "shipml.yaml"
            served.write_text(trainer.read_text())
            listed = run_cli("models", "-c", served)
            assert listed.exit_code == 0 and "champion" in listed.output
            with Server(served) as running:
                assert _predict_like_the_project(running.url, trainer) == "1"
                # a new version trained here, promoted there: the server follows
                assert run_cli("train", "-c", trainer).exit_code == 0
                assert run_cli("promote", "2", "-c", served).exit_code == 0
                deadline = time.monotonic() + 60
                while running.get("/ready").json().get("model_version") != "2":
                    assert time.monotonic() < deadline, "the server did not follow"
                    time.sleep(0.2)
            assert Project.load(trainer).champion() == 2
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()
