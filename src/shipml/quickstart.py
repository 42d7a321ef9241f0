"""`shipml quickstart`: the whole loop on the bundled demo data, narrated."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from shipml import console as ui
from shipml.data.sources import read_table_file
from shipml.demo import write_demo_data
from shipml.errors import ConfigError
from shipml.project import Project
from shipml.scaffold import init_project
from shipml.scoring import write_table


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return dict(json.loads(answer.read()))


def _step(text: str) -> None:
    ui.console.rule(f"[bold]{text}")


_MARKER = ".shipml-quickstart"


def _prepare(folder: Path) -> None:
    """A new or empty folder, or one an earlier quickstart made (reset); never a user's folder."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--dir {folder} is a file", "choose a folder for the demo project")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / _MARKER).exists():
        raise ConfigError(
            f"--dir {folder} is not empty and was not made by `shipml quickstart`",
            "choose a new or empty folder, e.g. --dir shipml-quickstart",
        )
    if (folder / _MARKER).exists():
        for name in (".shipml", "data", "shipml.yaml", "scored.csv", "drift.html"):
            path = folder / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _MARKER).write_text("made by `shipml quickstart`; it resets this folder on rerun\n")


def run_quickstart(folder: Path, time_budget: float = 60.0) -> Project:
    folder = folder.resolve()
    _prepare(folder)
    _step("1. Demo data (synthetic customers, documented seeds; see shipml.demo)")
    paths = write_demo_data(folder / "data")
    for key, path in paths.items():
        ui.console.print(f"  {key:<9} {path}")

    _step("2. shipml init data/customers.csv --target churned")
    config_path = folder / "shipml.yaml"
    result = init_project(str(paths["train"]), "churned", name="churn", out=config_path, force=True)
    ui.console.print(ui.schema_table(result.schema, "Inferred column roles"))
    # The demo trains twice; three folds keep each run short on a laptop.
    raw = yaml.safe_load(config_path.read_text())
    text = config_path.read_text().replace("  cv: 5 ", "  cv: 3 ")
    config_path.write_text(text)
    ui.console.print(
        f"  wrote {config_path} (task {raw['task']}, metric {raw['training']['metric']})"
    )

    project = Project.load(config_path)
    _step(f"3. shipml train --time-budget {time_budget:.0f}")
    with ui.train_progress() as progress:
        first = project.train(time_budget=time_budget, on_event=progress)
    ui.train_summary(first)

    _step("4. shipml models")
    ui.console.print(ui.versions_table(project.config.name, project.models()))

    _step("5. shipml predict data/new.csv --out scored.csv")
    scored_path = folder / "scored.csv"
    new = read_table_file(paths["new"])
    model = project.load_model("champion")
    write_table(model.score(new, source=str(paths["new"])), scored_path)
    ui.console.print(
        f"  scored {len(new)} rows (five of them from a region never seen) → {scored_path}"
    )

    _step("6. shipml evaluate data/labelled.csv")
    evaluation = project.evaluate(read_table_file(paths["labelled"]), source="labelled.csv")
    ui.console.print(ui.evaluation_table(evaluation, "labelled.csv"))

    _step("7. New labelled data arrives: shipml train --data more.csv, promote, rollback")
    more = folder / "data" / "more.csv"
    pd.concat([read_table_file(paths["train"]), read_table_file(paths["labelled"])]).to_csv(
        more, index=False
    )
    with ui.train_progress() as progress:
        second = project.train(time_budget=time_budget, data=more, on_event=progress)
    ui.console.print(
        f"  version {second.version} ({second.best}, test {second.metric} "
        f"{ui.fmt(second.test_metrics.get(second.metric))}) registered as {second.alias}"
    )
    previous = project.promote(second.version)
    ui.console.print(f"  promote {second.version}: champion {previous} → {second.version}")
    old, new_champion = project.rollback()
    ui.console.print(f"  rollback: champion {old} → {new_champion}")
    ui.console.print(ui.versions_table(project.config.name, project.models()))

    _step("8. shipml serve: the champion over HTTP (POST /predict)")
    from shipml.serving.predlog import read_predictions
    from shipml.serving.run import background_server, post_json

    new_rows = read_table_file(paths["new"])
    with background_server(project) as url:
        columns = [c["name"] for c in _get_json(url + "/model")["input_schema"]]
        row = json.loads(new_rows[columns].head(1).to_json(orient="records", date_format="iso"))[0]
        answer = post_json(url + "/predict", {"features": row})
    ui.console.print(f'  POST {url}/predict {{"features": {{...}}}}')
    ui.console.print(f"  → {json.dumps(answer)}")
    logged = sum(1 for _ in read_predictions(folder / ".shipml" / "predictions"))
    ui.console.print(f"  logged under .shipml/predictions/ ({logged} prediction so far)")

    _step("9. shipml monitor --current data/new.csv --report drift.html")
    from shipml.monitoring.service import run_monitor

    drift_path = folder / "drift.html"
    watched, _ = run_monitor(project, current=paths["new"], report=drift_path)
    ui.monitor_summary(watched)

    _step("Done")
    ui.console.print(
        ui.paths_table(
            {
                "config": config_path,
                "MLflow store": project.store.tracking_uri,
                "artifacts": folder / ".shipml" / "artifacts",
                "reports": folder / ".shipml" / "reports",
                "scored file": scored_path,
                "drift report": drift_path,
            }
        )
    )
    ui.console.print(
        f"Next: cd {folder} && shipml models · shipml ui · shipml serve · "
        "shipml predict data/new.csv --out x.csv · shipml monitor --from-log"
    )
    return project
