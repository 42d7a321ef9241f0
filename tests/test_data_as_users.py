"""Data as users have it, through train, predict, serve and monitor.

An insurance table coded as small integers, with a column that holds only 0 and 1 in training,
exported from Excel as Latin-1 text with accents, with dates written day first (dd/mm/yyyy),
month first (mm/dd/yyyy) and as ISO 8601; new rows then bring a 3, a word where a number goes
and a date that is not one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from shipml import Project
from shipml.config import DataConfig, SplitConfig
from shipml.data.coerce import check_input
from shipml.data.infer import infer_schema
from shipml.data.sources import load_table, read_table_file
from shipml.data.split import split_table
from shipml.errors import DataError, InputSchemaError
from shipml.scoring import issues_path
from tests.conftest import run_cli
from tests.serving_helpers import Server

TARGET = "CARAVAN"
CITIES = ["Montréal", "Zürich", "São Paulo", "Köln", "Besançon", "Málaga"]
# Day-first dates whose day is at most 12, so that reading them month first changes the
# season: the target follows the month of policy_start (May to August: 1).
SUMMER = ["01/06/2023", "02/07/2023", "03/08/2023", "12/05/2023"]  # 1 June, 2 July, ...
WINTER = ["06/01/2023", "07/02/2023", "08/03/2023", "05/12/2023"]  # 6 January, ...


def insurance_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({f"MOSTYPE{i}": rng.integers(0, 10, n) for i in range(3)})
    df["PZEILPL"] = rng.integers(0, 2, n)  # only 0 and 1 in training
    start = pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 730, n), unit="D")
    df["policy_start"] = start.strftime("%d/%m/%Y")  # day first
    claim = start + pd.to_timedelta(rng.integers(1, 300, n), unit="D")
    df["claim_date"] = claim.strftime("%m/%d/%Y")  # month first
    df["renewal"] = (start + pd.Timedelta(days=365)).strftime("%Y-%m-%d")  # ISO
    df["city"] = rng.choice(CITIES, n)
    summer = np.isin(start.month, [5, 6, 7, 8])
    df[TARGET] = np.where(summer ^ (rng.random(n) < 0.05), 1, 0)
    return df


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The table written as Excel writes CSV in Western Europe (Latin-1 here), trained once."""
    folder = tmp_path_factory.mktemp("insurance")
    insurance_frame(400, 0).to_csv(folder / "train.csv", index=False, encoding="latin-1")
    config = folder / "shipml.yaml"
    result = run_cli("init", folder / "train.csv", "--target", TARGET, "--out", config)
    assert result.exit_code == 0, result.all
    raw = yaml.safe_load(config.read_text())
    raw["training"].update(
        cv=3, time_budget_s=60, trials=0, models=["random_forest"], baselines=False
    )
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    train = run_cli("train", "-c", config)
    assert train.exit_code == 0, train.all
    (folder / "train.out").write_text(train.all)
    return config


def new_rows() -> pd.DataFrame:
    """New rows of the same table: a 3 in the 0/1 column, a word in a numeric column, a
    date that is none, and day-first dates whose season depends on reading them day first."""
    df = insurance_frame(16, 1).drop(columns=[TARGET])
    df["policy_start"] = SUMMER + WINTER + SUMMER + WINTER
    df.loc[2, "PZEILPL"] = 3
    df["MOSTYPE0"] = df["MOSTYPE0"].astype(object)
    df.loc[4, "MOSTYPE0"] = "onbekend"
    df.loc[6, "policy_start"] = "soon"
    return df


def summer_minus_winter(probability: np.ndarray, rows: pd.DataFrame) -> float:
    summer = rows["policy_start"].isin(SUMMER).to_numpy()
    winter = rows["policy_start"].isin(WINTER).to_numpy()
    return float(probability[summer].mean() - probability[winter].mean())


# --- item 4: a 0/1 column is numbers; one odd value does not fail a batch ------------------------


def test_numbers_that_are_0_and_1_are_numeric_and_yes_no_words_are_boolean() -> None:
    df = pd.DataFrame(
        {
            "ints": [0, 1] * 10,
            "floats": [0.0, 1.0] * 10,
            "text_digits": ["0", "1"] * 10,
            "words": ["yes", "no"] * 10,
            "flags": [True, False] * 10,
            "tf": ["T", "F"] * 10,
            "y": [0, 1, 1, 0] * 5,
        }
    )
    roles = {name: c.role for name, c in infer_schema(df, "y").columns.items()}
    assert roles == {
        "ints": "numeric",
        "floats": "numeric",
        "text_digits": "categorical",  # digits as text stay text (like zip codes)
        "words": "boolean",
        "flags": "boolean",
        "tf": "boolean",
    }


def test_training_reads_latin1_and_keeps_one_date_format_per_column(project: Path) -> None:
    schema = Project.load(project).load_model("champion").schema
    assert schema.columns["PZEILPL"].role == "numeric"
    formats = {c: schema.columns[c].date_format for c in ("policy_start", "claim_date", "renewal")}
    assert formats == {
        "policy_start": "%d/%m/%Y",
        "claim_date": "%m/%d/%Y",
        "renewal": "ISO8601",
    }
    assert schema.encoding == "cp1252"
    assert "Montréal" in (schema.columns["city"].categories or [])
    output = (project.parent / "train.out").read_text()
    assert "read as cp1252" in output


def test_predict_scores_every_row_and_lists_what_it_could_not_read(project: Path) -> None:
    folder = project.parent
    rows = new_rows()
    rows.to_csv(folder / "new.csv", index=False, encoding="latin-1")
    out = folder / "scored.csv"
    result = run_cli("predict", folder / "new.csv", "--out", out, "-c", project)
    assert result.exit_code == 0, result.all
    said = " ".join(result.output.split())  # (the console wraps long lines)
    assert "read as cp1252" in said
    assert "column 'MOSTYPE0': 1 value(s) are not a number (row 5: 'onbekend')" in said
    assert "column 'policy_start': 1 value(s) are not a date/time in the format %d/%m/%Y" in said
    assert "scored.csv.issues.json" in said
    scored = pd.read_csv(out, encoding="utf-8")
    assert len(scored) == len(rows)
    assert scored["prediction"].notna().all()
    assert scored.loc[2, "PZEILPL"] == 3  # a number, scored as one
    assert scored["city"].isin(CITIES).all()  # the accents read right
    issues = json.loads(issues_path(out).read_text())
    assert issues["unreadable"] == {"MOSTYPE0": 1, "policy_start": 1}
    assert issues["columns"]["policy_start"]["first_row"] == 7
    assert issues["rows"] == len(rows)
    # Day first: 1 June is summer, 6 January winter (read month first, they swap).
    assert summer_minus_winter(scored["proba_1"].to_numpy(), rows) > 0.3


def test_predict_strict_refuses_the_input_at_the_first_unreadable_value(project: Path) -> None:
    folder = project.parent
    new_rows().to_csv(folder / "strict.csv", index=False, encoding="latin-1")
    out = folder / "strict-scored.csv"
    result = run_cli("predict", folder / "strict.csv", "--out", out, "-c", project, "--strict")
    assert result.exit_code == 2, result.all
    assert "column 'MOSTYPE0' row 5: 'onbekend' is not a number" in " ".join(result.all.split())
    assert "Traceback" not in result.all
    assert not out.exists()


def test_predict_without_unreadable_values_leaves_no_issues_file(project: Path) -> None:
    folder = project.parent
    clean = insurance_frame(10, 2).drop(columns=[TARGET])
    clean.to_csv(folder / "clean.csv", index=False)
    out = folder / "clean-scored.csv"
    issues_path(out).write_text("{}")  # from an earlier run
    result = run_cli("predict", folder / "clean.csv", "--out", out, "-c", project)
    assert result.exit_code == 0, result.all
    assert "read as" not in result.output  # UTF-8: nothing to say
    assert not issues_path(out).exists()


def test_a_model_whose_schema_says_boolean_for_a_0_1_column_scores_a_3_as_missing(
    project: Path,
) -> None:
    """Models trained before 0/1 numbers were read as numbers have a yes/no column there."""
    model = Project.load(project).load_model("champion")
    model.schema.columns["PZEILPL"].role = "boolean"
    rows = new_rows().drop(index=[4, 6]).reset_index(drop=True)  # only the 3 is odd
    with pytest.raises(InputSchemaError, match="column 'PZEILPL' row 3: '3' is not true/false"):
        model.score(rows, source="new.csv")
    unreadable: list = []
    scored = model.score(rows, source="new.csv", unreadable=unreadable)
    assert len(scored) == len(rows) and scored["prediction"].notna().all()
    assert [(u.column, u.count, u.first_row) for u in unreadable] == [("PZEILPL", 1, 3)]


# --- the server: /predict/batch scores what it can; "strict": true refuses ---------------------


def test_serve_batch_scores_every_row_and_counts_what_it_could_not_read(project: Path) -> None:
    rows = new_rows()
    records = json.loads(rows.to_json(orient="records"))
    model = Project.load(project).load_model("champion")
    expected = model.score(rows, unreadable=[])["proba_1"].to_numpy()
    with Server(project) as server:
        answer = server.post("/predict/batch", {"instances": records})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["unreadable"] == {"MOSTYPE0": 1, "policy_start": 1}
        proba = np.array([p["1"] for p in body["probabilities"]])
        assert len(proba) == len(rows)
        np.testing.assert_allclose(proba, expected, atol=1e-5)
        assert summer_minus_winter(proba, rows) > 0.3

        strict = server.post("/predict/batch", {"instances": records, "strict": True})
        assert strict.status_code == 422, strict.text
        places = [d["loc"] for d in strict.json()["detail"]]
        assert places == [
            ["body", "instances", 4, "MOSTYPE0"],
            ["body", "instances", 6, "policy_start"],
        ]

        clean = server.post("/predict/batch", {"instances": [records[0]], "strict": True})
        assert clean.status_code == 200 and clean.json()["unreadable"] == {}

        one = server.post("/predict", {"features": records[0]})  # "01/06/2023": 1 June
        assert one.status_code == 200, one.text
        assert one.json()["probabilities"]["1"] == pytest.approx(expected[0], abs=1e-5)
    monitored = run_cli("monitor", "-c", project, "--from-log")
    assert monitored.exit_code in (0, 1), monitored.all
    assert "Traceback" not in monitored.all


def test_monitor_reads_a_latin1_file_with_day_first_dates(project: Path) -> None:
    folder = project.parent
    current = insurance_frame(200, 3)
    current.to_csv(folder / "current.csv", index=False, encoding="latin-1")
    result = run_cli("monitor", "-c", project, "--current", folder / "current.csv")
    assert result.exit_code == 0, result.all
    assert "city" in result.output
    assert "not scored" not in result.output and "not_scored" not in result.output
    assert "current.csv (read as " in " ".join(result.output.split())  # the encoding is named


def test_the_python_records_path_reads_dates_in_the_columns_format(project: Path) -> None:
    """Records (JSON-like dicts) go through the fast path's column conversion: a day-first
    date is read day first there too, as the CLI and the server read it."""
    from shipml.models.fastpath import record_columns

    schema = Project.load(project).load_model().schema
    rows = new_rows().drop(index=[2, 4, 6]).head(4).to_dict("records")
    assert [r["policy_start"] for r in rows] == [
        "01/06/2023",
        "02/07/2023",
        "12/05/2023",
        "07/02/2023",
    ]
    columns = record_columns(rows, schema)
    months = pd.DatetimeIndex(columns["policy_start"]).month.tolist()
    assert months == [6, 7, 5, 2]  # 01/06/2023 is 1 June, not 6 January


def test_init_takes_the_date_format_an_ambiguous_column_needs(tmp_path: Path) -> None:
    # one text date column, with no day above 12: the values cannot tell day from month
    df = insurance_frame(120, 5).drop(columns=["claim_date", "renewal"])
    df["policy_start"] = SUMMER * 30
    df.to_csv(tmp_path / "train.csv", index=False)
    config = tmp_path / "shipml.yaml"
    refused = run_cli("init", tmp_path / "train.csv", "--target", TARGET, "--out", config)
    assert refused.exit_code == 2 and not config.exists()
    assert "--date-format 'policy_start=%d/%m/%Y'" in " ".join(refused.all.split())

    written = run_cli(
        "init", tmp_path / "train.csv", "--target", TARGET, "--out", config,
        "--date-format", "policy_start=%d/%m/%Y",
    )  # fmt: skip
    assert written.exit_code == 0, written.all
    raw = yaml.safe_load(config.read_text())
    assert raw["data"]["date_format"] == {"policy_start": "%d/%m/%Y"}
    assert Project.load(config).config.data.date_format == {"policy_start": "%d/%m/%Y"}
    # a file given in place of data.path is read as data.path is: with data.date_format
    raw["training"].update(cv=2, trials=0, models=["random_forest"], baselines=False)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    trained = run_cli("train", "-c", config, "--data", tmp_path / "train.csv")
    assert trained.exit_code == 0, trained.all
    evaluated = run_cli("evaluate", tmp_path / "train.csv", "-c", config)
    assert evaluated.exit_code == 0, evaluated.all

    one = run_cli(
        "init", tmp_path / "train.csv", "--target", TARGET, "--out", config, "--force",
        "--date-format", "%d/%m/%Y",
    )  # fmt: skip
    assert one.exit_code == 0, one.all
    assert yaml.safe_load(config.read_text())["data"]["date_format"] == "%d/%m/%Y"

    for bad, message in [
        ("policy_start=soon", "'soon' is not a date format"),
        ("start_date=%d/%m/%Y", "data.date_format names column 'start_date', which is not"),
    ]:
        result = run_cli(
            "init", tmp_path / "train.csv", "--target", TARGET, "--out", config, "--force",
            "--date-format", bad,
        )  # fmt: skip
        assert result.exit_code == 2, result.all
        assert message in " ".join(result.all.split()) and "Traceback" not in result.all


# --- item 5: one date format per column --------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["04/05/2023", "28/01/2024"], "%d/%m/%Y"),
        (["05/04/2023", "01/28/2024"], "%m/%d/%Y"),
        (["2023-05-04", "2024-01-28T10:30:00"], "ISO8601"),
        (["4.5.2023", "28.1.2024"], "%d.%m.%Y"),
    ],
)
def test_one_date_format_is_inferred_per_column(values: list[str], expected: str) -> None:
    df = pd.DataFrame({"when": values * 10, "y": [0, 1] * 10})
    schema = infer_schema(df, "y")
    assert schema.columns["when"].date_format == expected
    month = check_input(df.drop(columns="y"), schema)["when"].dt.month.tolist()
    assert month[:2] == [5, 1]  # 4 May 2023 (5 April, month first) and 28 January 2024


@pytest.mark.parametrize(
    ("values", "words"),
    [
        (["04/05/2023", "05/06/2023"], "ambiguous"),
        (["28/01/2024", "2024-01-28", "03/02/2023"], "mixes date formats"),
    ],
)
def test_mixed_or_ambiguous_dates_are_refused_naming_the_column_and_the_key(
    tmp_path: Path, values: list[str], words: str
) -> None:
    path = tmp_path / "dates.csv"
    pd.DataFrame({"signed_on": values * 10, "y": [0, 1] * (len(values) * 5)}).to_csv(
        path, index=False
    )
    result = run_cli("init", path, "--target", "y", "--out", tmp_path / "shipml.yaml")
    assert result.exit_code == 2, result.all
    said = " ".join(result.all.split())
    assert "column 'signed_on'" in said and words in said
    assert "data.date_format" in said
    assert "Traceback" not in result.all


def test_train_refuses_an_ambiguous_date_column_until_data_date_format_settles_it(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(4)
    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 365, 60), unit="D")
    ambiguous = days.where(days.day <= 12, days.map(lambda d: d.replace(day=12)))
    pd.DataFrame(
        {"signed_on": ambiguous.strftime("%d/%m/%Y"), "x": rng.normal(size=60), "y": [0, 1] * 30}
    ).to_csv(tmp_path / "train.csv", index=False)
    config = tmp_path / "shipml.yaml"
    raw = {
        "name": "dates",
        "data": {"path": "train.csv"},
        "target": "y",
        "training": {"models": ["random_forest"], "baselines": False, "trials": 0, "cv": 2},
    }
    config.write_text(yaml.safe_dump(raw))
    refused = run_cli("train", "-c", config)
    assert refused.exit_code == 2, refused.all
    said = " ".join(refused.all.split())
    assert "column 'signed_on'" in said and "ambiguous" in said and "data.date_format" in said
    raw["data"]["date_format"] = {"signed_on": "%d/%m/%Y"}
    config.write_text(yaml.safe_dump(raw))
    trained = run_cli("train", "-c", config, "--time-budget", "30")
    assert trained.exit_code == 0, trained.all
    schema = Project.load(config).load_model("champion").schema
    assert schema.columns["signed_on"].date_format == "%d/%m/%Y"


def test_a_time_split_orders_day_first_dates_by_day_first() -> None:
    days = pd.date_range("2023-01-01", periods=40, freq="5D")  # 1 January to 15 July
    df = pd.DataFrame({"when": days.strftime("%d/%m/%Y"), "x": range(40), "y": [0, 1] * 20})
    train, test = split_table(df, infer_schema(df, "y"), SplitConfig(time_column="when"))
    latest = pd.to_datetime(train["when"], format="%d/%m/%Y").max()
    assert (pd.to_datetime(test["when"], format="%d/%m/%Y") > latest).all()
    assert test["when"].iloc[-1] == "15/07/2023"


def test_data_date_format_settles_an_ambiguous_column(tmp_path: Path) -> None:
    path = tmp_path / "dates.csv"
    pd.DataFrame({"signed_on": ["04/05/2023", "05/06/2023"] * 10, "y": [0, 1] * 10}).to_csv(
        path, index=False
    )
    df = load_table(DataConfig(path=str(path), date_format={"signed_on": "%d/%m/%Y"}), tmp_path)
    schema = infer_schema(df, "y")
    assert schema.columns["signed_on"].date_format == "%d/%m/%Y"
    assert check_input(df.drop(columns="y"), schema)["signed_on"][0] == pd.Timestamp("2023-05-04")
    wrong = load_table(DataConfig(path=str(path), date_format="%Y-%m-%d"), tmp_path)
    with pytest.raises(DataError, match=r"data\.date_format '%Y-%m-%d' does not read column"):
        infer_schema(wrong, "y")
    with pytest.raises(ValueError, match="not a date format"):
        DataConfig(path="x.csv", date_format="dd/mm/yyyy")


# --- item 8: encodings ------------------------------------------------------------------------


def test_cp1252_with_the_euro_sign_and_a_bom_and_a_chosen_encoding(tmp_path: Path) -> None:
    text = "article,prix\nCafé crème,3 €\nRösti,4 €\nPão,1 €\n"
    euro = tmp_path / "euro.csv"
    euro.write_bytes(text.encode("cp1252"))
    df = read_table_file(euro)
    assert df.attrs["encoding"] == "cp1252"
    assert df["prix"].tolist() == ["3 €", "4 €", "1 €"]
    bom = tmp_path / "bom.csv"
    bom.write_bytes(text.encode("utf-8-sig"))
    assert read_table_file(bom).columns[0] == "article"
    cyrillic = tmp_path / "cyrillic.csv"
    cyrillic.write_bytes("город,цена\nМосква,3\nКазань,4\nСанкт-Петербург,5\n".encode("cp1251"))
    assert read_table_file(cyrillic)["город"][0] == "Москва"
    latin = load_table(DataConfig(path=str(euro), encoding="latin-1"), tmp_path)
    assert latin.attrs["encoding"] == "latin-1"
    assert latin["article"][0] == "Café crème"


def test_an_unknown_data_encoding_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "shipml.yaml"
    config.write_text("name: x\ndata: {path: a.csv, encoding: latin-9000}\ntarget: y\n")
    result = run_cli("train", "-c", config)
    assert result.exit_code == 2, result.all
    assert "data.encoding" in result.all and "latin-9000" in result.all
    with pytest.raises(ValueError):
        DataConfig(path="a.csv", encoding="latin-9000")
