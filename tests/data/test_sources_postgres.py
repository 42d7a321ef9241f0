"""The SQL source against a real PostgreSQL server (CI starts one; see .ci/run).

Set SHIPML_TEST_POSTGRES_URL to a SQLAlchemy URL of a database this test may write to. Without
it the test is skipped, unless SHIPML_REQUIRE_POSTGRES=1, which makes a missing server a failure.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy

from shipml.config import DataConfig
from shipml.data.sources import load_table, resolve_sql_url
from shipml.errors import DataSourceError

pytestmark = pytest.mark.integration


def _postgres_url() -> str:
    url = os.environ.get("SHIPML_TEST_POSTGRES_URL")
    if not url:
        reason = "SHIPML_TEST_POSTGRES_URL is not set (a SQLAlchemy URL of a writable database)"
        if os.environ.get("SHIPML_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"SHIPML_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return url


def test_load_table_from_postgres(tmp_path: Path) -> None:
    postgres_url = _postgres_url()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, 50),
            "plan": rng.choice(["basic", "pro"], 50),
            "income": rng.normal(50_000, 5_000, 50),
            "churned": rng.choice(["no", "yes"], 50),
        }
    )
    table = f"shipml_test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(resolve_sql_url(postgres_url, tmp_path))
    try:
        frame.to_sql(table, engine, index=False)
        source = DataConfig(url=postgres_url, query=f"SELECT * FROM {table} ORDER BY age")
        df = load_table(source, base_dir=tmp_path)
        expected = frame.sort_values("age", kind="mergesort").reset_index(drop=True)
        assert list(df.columns) == list(frame.columns)
        assert len(df) == len(frame)
        pd.testing.assert_series_equal(df["age"], expected["age"], check_dtype=False)
        assert sorted(df["plan"]) == sorted(frame["plan"])
        np.testing.assert_allclose(np.sort(df["income"]), np.sort(frame["income"]))
        # the short spelling that hosting services hand out, which SQLAlchemy alone refuses
        short = "postgres://" + postgres_url.split("://", 1)[1]
        again = load_table(DataConfig(url=short, query=f"SELECT * FROM {table}"), tmp_path)
        assert len(again) == len(frame)

        bad = DataConfig(url=postgres_url, query=f"SELECT nope FROM {table}")
        with pytest.raises(DataSourceError, match=r"data\.query failed"):
            load_table(bad, base_dir=tmp_path)
        empty = DataConfig(url=postgres_url, query=f"SELECT * FROM {table} WHERE age < 0")
        with pytest.raises(DataSourceError, match="no rows"):
            load_table(empty, base_dir=tmp_path)
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
