"""/docs and /redoc offline: headless Chromium, with every name but 127.0.0.1 unresolvable (as on
a machine without internet access), renders the served model's input fields from the assets
the server itself serves; Chromium's network log shows no request leaving 127.0.0.1."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from shipml.serving.docs import ASSETS_PATH
from tests.conftest import make_project, run_cli
from tests.serving_helpers import Server
from tests.test_serving import _customers

pytestmark = pytest.mark.integration

CHROMIUM_S = 90  # one page load, rendered, on a loaded two-core machine
PAGE_LOADS = 101845102  # the network traffic annotation of "blink_resource_loader"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("docs-page")

    def edit(raw: dict[str, Any]) -> None:
        raw["features"]["exclude"] = ["customer_id"]
        raw["training"].update(models=["random_forest"], baselines=False, trials=0, cv=2)
        raw["training"]["params"] = {"random_forest": {"n_estimators": 10}}
        raw["training"]["ensemble"] = False

    config = make_project(folder, _customers(), "churned", edit)
    result = run_cli("train", "-c", config)
    assert result.exit_code == 0, result.all
    with Server(config) as running:
        yield running


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        "headless Chromium is not installed: `apt-get install -y chromium` (Debian's package)"
    )


def _render(url: str, folder: Path) -> tuple[str, set[str]]:
    """The DOM Chromium renders at ``url`` once the page's scripts ran, with only 127.0.0.1
    resolvable; and every URL Chromium asked for (from its network log)."""
    folder.mkdir(parents=True, exist_ok=True)
    netlog = folder / "netlog.json"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # (tests run as root)
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={folder / 'profile'}",
        # Offline: any name but the server's address fails to resolve (CDNs, fonts, validators).
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={netlog}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_S)
    assert done.returncode == 0, done.stderr[-3000:]
    log = netlog.read_text(errors="replace")
    # The page's own loads (scripts, styles, fonts, fetches) carry Blink's resource loader
    # annotation; Chromium's calls home (updates, accounts, time) carry others.
    asked = set(re.findall(rf'"traffic_annotation":{PAGE_LOADS},"url":"([^"]+)"', log))
    assert asked, "no page loads in Chromium's network log"
    return done.stdout, asked


def _outside(asked: set[str]) -> set[str]:
    return {u for u in asked if not re.match(r"^(http|ws)s?://127\.0\.0\.1[:/]", u)}


def _fields(server: Server) -> list[str]:
    return [c["name"] for c in server.get("/model").json()["input_schema"]]


def test_docs_renders_the_models_fields_offline(server: Server, tmp_path: Path) -> None:
    fields = _fields(server)
    assert {"age", "plan", "monthly_charges"} <= set(fields)
    page = requests.get(server.url + "/docs", timeout=10).text
    assert "cdn." not in page and "https://" not in page, page
    # Deep link to /predict: Swagger UI opens it, and its example body lists every field.
    dom, asked = _render(server.url + "/docs#/predict/predict_predict_post", tmp_path / "docs")
    assert 'id="swagger-ui"' in dom
    assert "swagger-ui" in dom and "opblock" in dom, dom[-2000:]  # Swagger UI ran
    assert "/predict/batch" in dom and "/feedback" in dom
    example = " ".join(re.sub(r"<[^>]+>", "", dom).split())
    for name in ("age", "plan", "monthly_charges", "tenure_months"):
        assert f'"{name}"' in example, f"{name} not on the page"
    assert f"{server.url}{ASSETS_PATH}/swagger-ui-bundle.js" in asked
    assert not _outside(asked), _outside(asked)


def test_redoc_renders_offline_too(server: Server, tmp_path: Path) -> None:
    page = requests.get(server.url + "/redoc", timeout=10)
    assert "cdn." not in page.text and "fonts.googleapis" not in page.text, page.text
    # ReDoc's bundle would fetch its footer logo from its CDN: the page's policy refuses it.
    assert "default-src 'self'" in page.headers["content-security-policy"]
    dom, asked = _render(server.url + "/redoc", tmp_path / "redoc")
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    assert "Predict one row" in text and "Predict many rows" in text, text[:2000]
    assert f"{server.url}{ASSETS_PATH}/redoc.standalone.js" in asked
    assert not _outside(asked), _outside(asked)


def test_the_assets_are_served_by_the_server(server: Server) -> None:
    for name, kind in (
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui.css", "css"),
        ("redoc.standalone.js", "javascript"),
        ("favicon.png", "png"),
    ):
        answer = requests.get(f"{server.url}{ASSETS_PATH}/{name}", timeout=10)
        assert answer.status_code == 200 and kind in answer.headers["content-type"], name
        assert len(answer.content) > 1000, name
    # The documentation pages are not operations of the API.
    paths = server.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc", ASSETS_PATH} & set(paths)
    assert json.dumps(paths).count("docs-assets") == 0
