"""Property-based requests from the OpenAPI document against a real `shipml serve`, the stateful
phase included (a prediction's request id followed into /feedback): no server error, and every
answer's status code and content type are the ones the document declares. Bounded for CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chaos.figures import record
from tests.conftest import make_project, run_cli
from tests.serving_helpers import Server
from tests.test_serving import _customers

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def edit(raw: dict) -> None:
        raw["features"]["exclude"] = ["customer_id"]
        raw["training"].update(models=["random_forest"], baselines=False, trials=0)
        raw["training"]["params"] = {"random_forest": {"n_estimators": 10}}
        raw["training"]["ensemble"] = False
        raw["serving"] = {"max_batch_rows": 50}

    config = make_project(tmp_path_factory.mktemp("chaos-st"), _customers(), "churned", edit)
    assert run_cli("train", "-c", config).exit_code == 0
    return config


@pytest.mark.timeout(600)
def test_schemathesis_every_phase_finds_nothing(tmp_path: Path, project: Path) -> None:
    with Server(project, env={"SHIPML_ADMIN_TOKEN": "token-for-the-fuzzer"}) as server:
        st = Path(sys.executable).with_name("schemathesis")
        result = subprocess.run(
            [
                str(st),
                "run",
                server.url + "/openapi.json",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--checks",
                CHECKS,
                "--max-examples",
                "40",
                "--header",
                "Authorization: Bearer token-for-the-fuzzer",
                "--seed",
                "7",
                "--request-timeout",
                "20",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=540,
            cwd=tmp_path,  # its cache folder goes there, not into the working tree
        )
        output = result.stdout + result.stderr
        counts = re.search(r"(\d+) generated, (\d+) passed", output)
        generated = int(counts[1]) if counts else 0
        held = result.returncode == 0 and counts is not None and counts[1] == counts[2]
        record("schemathesis over the OpenAPI document", "generated cases", generated, held=held)
        assert held, output[-5000:]
        assert generated > 300, output[-3000:]
        assert "Tested: 8" in output  # every operation, /predict and /admin/reload included
        # The stateful phase ran: a prediction's request id was followed into /feedback.
        links = re.search(r"API Links:\s+(\d+) covered", output)
        scenarios = re.search(r"Scenarios:\s+(\d+)", output)
        assert links and int(links[1]) >= 1 and scenarios, output[-3000:]
        record("schemathesis over the OpenAPI document", "stateful scenarios", int(scenarios[1]))
        assert server.get("/ready").status_code == 200
