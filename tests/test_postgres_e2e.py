"""`shipml train` end to end from a real PostgreSQL table (CI starts the server; see .ci/run)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy
import yaml

from shipml.data.sources import resolve_sql_url
from shipml.project import Project
from tests.conftest import run_cli, wine_frame
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
