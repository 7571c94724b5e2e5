"""The energy dashboard's page and assets, served by the real app on a real SQLite data dir."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from device.checkpoint import save_checkpoint
from device.model import ModelConfig, ResNet26
from service.app import create_app
from service.dashboard import ASSET_TYPES, PAGE_NAME, STATIC_DIR
from tests.test_app import make_settings

TOKEN = "s3cret"
# The SVG namespace is an identifier the script must name to create SVG elements, not a link.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained 4-class base model: the page never needs a good one."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base.pt", ResNet26(ModelConfig(num_classes=4)))


@pytest.fixture
def client(tmp_path: Path, base_model_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, base_model_path))) as test_client:
        yield test_client


@pytest.fixture
def guarded_client(tmp_path: Path, base_model_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, base_model_path, host="0.0.0.0", api_token=TOKEN)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_the_page_is_html_that_loads_its_script_and_styles(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    page = response.text
    assert page.startswith("<!doctype html>")
    assert '<script src="/static/dashboard.js" defer></script>' in page
    assert '<link rel="stylesheet" href="/static/dashboard.css">' in page


@pytest.mark.parametrize("name, content_type", sorted(ASSET_TYPES.items()))
def test_assets_are_served_with_their_content_types(client: TestClient, name: str, content_type: str) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (STATIC_DIR / name).read_bytes()


def test_every_local_reference_of_the_page_is_served(client: TestClient) -> None:
    page = client.get("/").text
    references = re.findall(r'(?:src|href)="(/[^"]*)"', page)
    assert sorted(references) == ["/static/dashboard.css", "/static/dashboard.js"]
    for reference in references:
        assert client.get(reference).status_code == 200, reference


def test_nothing_on_the_page_points_outside_the_daemon(client: TestClient) -> None:
    for path in ("/", *(f"/static/{name}" for name in ASSET_TYPES)):
        text = client.get(path).text.replace(SVG_NAMESPACE, "")
        assert not re.search(r"https?://", text, re.IGNORECASE), path
        assert not re.search(r"""(?:src|href)\s*=\s*["']?//""", text), path  # protocol-relative URLs
        assert "@import" not in text and "url(http" not in text, path


def test_an_unknown_asset_is_a_json_404(client: TestClient) -> None:
    for path in ("/static/nope.js", "/static/dashboard.html", "/static/..%2Fapp.py"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "error" in response.json()


def test_the_page_and_its_assets_need_no_token_but_the_data_does(guarded_client: TestClient) -> None:
    for path in ("/", *(f"/static/{name}" for name in ASSET_TYPES)):
        assert guarded_client.get(path).status_code == 200, path
    authorised = {"authorization": f"Bearer {TOKEN}"}
    for path in ("/v1/jobs", "/v1/energy", "/v1/status", "/v1/jobs/1/power"):
        response = guarded_client.get(path)
        assert response.status_code == 401 and "bearer token" in response.json()["error"], path
    for path in ("/v1/jobs", "/v1/energy", "/v1/status"):
        assert guarded_client.get(path, headers=authorised).status_code == 200, path
    # Only the page's own files are public: any other path under /static/ still asks for the token.
    assert guarded_client.get("/static/nope.js").status_code == 401
    assert guarded_client.get("/static/nope.js", headers=authorised).status_code == 404


def test_a_non_editable_install_ships_the_page() -> None:
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "static/*" in package_data["service"]
    assert sorted(p.name for p in STATIC_DIR.iterdir()) == sorted([PAGE_NAME, *ASSET_TYPES])
