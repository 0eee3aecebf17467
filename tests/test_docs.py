"""GET /docs: Swagger UI over /openapi.json, every file served by Cylindria itself."""
from __future__ import annotations

import base64
import hashlib
import re
import struct
from html.parser import HTMLParser

import pytest

from cylindria.service.server import Service
from tests import screenshot_docs
from tests.browser import find_chromium, rendered_dom
from tests.conftest import make_config
from tests.helpers import Api


class Page(HTMLParser):
    """The URLs a page loads (scripts, styles, icons), its inline scripts and the UI's root."""

    def __init__(self, text: str):
        super().__init__()
        self.loads: list[str] = []
        self.inline: list[str] = []
        self.root: dict = {}
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = "src" not in attrs
        for name in ("src", "href"):
            if attrs.get(name) is not None:
                self.loads.append(attrs[name])
        if attrs.get("id") == "swagger-ui":
            self.root = attrs

    def handle_data(self, data):
        if self._in_script:
            self.inline.append(data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False


def sha256_source(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def test_docs_needs_a_key_by_default(service):
    stranger = Api(service.url, key=None)
    for path in ("/docs", "/docs/static/swagger-ui-bundle.js"):
        answer = stranger.get(path)
        assert answer.status_code == 401
        assert answer.json()["code"] == "unauthorized"


def test_docs_serves_swagger_ui_whose_every_file_comes_from_cylindria(api):
    answer = api.get("/docs")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    page = Page(answer.text)
    assert page.loads, "the page loads no file"
    for url in page.loads:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not Cylindria's"
        assert api.get(url).status_code == 200, url
    bundle = api.get("/docs/static/swagger-ui-bundle.js")
    assert "javascript" in bundle.headers["Content-Type"]
    assert "SwaggerUIBundle" in bundle.text
    assert "/docs/static/swagger-ui-bundle.js" in page.loads


def test_the_ui_reads_cylindrias_own_document(api):
    page = Page(api.get("/docs").text)
    url = page.root["data-openapi-url"]
    assert url == "/openapi.json"
    assert api.get(url).json()["components"]["securitySchemes"].keys() >= {"ApiKey", "Bearer"}
    assert any("validatorUrl: null" in script for script in page.inline)  # no call home


def test_the_page_policy_allows_only_cylindria_and_its_own_inline_script(api):
    answer = api.get("/docs")
    policy = dict(part.strip().split(" ", 1) for part in
                  answer.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    scripts = Page(answer.text).inline
    assert policy["script-src"].split() == ["'self'"] + [sha256_source(s) for s in scripts]


def test_docs_public_serves_the_page_its_files_and_the_document_without_a_key(fakes, tmp_path):
    with Service(make_config(fakes, tmp_path, docs_public=True)) as service:
        stranger = Api(service.url, key=None)
        page = stranger.get("/docs")
        assert page.status_code == 200
        for url in Page(page.text).loads + ["/openapi.json"]:
            assert stranger.get(url).status_code == 200, url
        assert stranger.get("/jobs").status_code == 401  # the API itself still needs the key


@pytest.mark.skipif(find_chromium() is None,
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_real_browser_renders_every_operation_from_cylindrias_files_only(fakes, tmp_path):
    with Service(make_config(fakes, tmp_path, docs_public=True)) as service:
        dom = rendered_dom(service.url + "/docs")
        document = Api(service.url).get("/openapi.json").json()
    rendered = {path.replace("\u200b", "") for path in
                re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom)}
    assert rendered == set(document["paths"]), "Swagger UI did not render the document"
    assert "Cylindria" in dom and 'class="swagger-ui' in dom
    assert "Failed to load API definition" not in dom


@pytest.mark.skipif(find_chromium() is None,
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_screenshot_command_writes_the_page_also_as_root(tmp_path, capsys):
    """python -m tests.screenshot_docs: chromium as root starts only with --no-sandbox."""
    out = tmp_path / "swagger-ui.png"
    assert screenshot_docs.main([str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(out)
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == screenshot_docs.SIZE
