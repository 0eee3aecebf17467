"""GET /docs: Swagger UI over /openapi.json, from the Swagger UI build that flask-swagger-ui
ships (no CDN: the page loads nothing from anywhere but Cylindria itself)."""
from __future__ import annotations

import base64
import hashlib
from importlib.resources import files

from flask import Blueprint, Flask, Response, render_template_string
from markupsafe import Markup

SWAGGER_UI_DIST = str(files("flask_swagger_ui") / "dist")  # swagger-ui-dist, as packaged

bp = Blueprint("docs", __name__, url_prefix="/docs", static_folder=SWAGGER_UI_DIST,
               static_url_path="/static")

# The endpoints that serve the page and everything it loads (--docs-public makes them public).
ENDPOINTS = frozenset({"docs.ui", "docs.static"})

# validatorUrl null: the default sends the document's URL to validator.swagger.io. Keys given
# to Authorize are kept in the page only (persistAuthorization off): gone on reload. The
# document's address comes from the page, so this script is a constant the policy can pin.
INITIALIZER = """
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl, domNode: root, deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout",
    validatorUrl: null, persistAuthorization: false
  });
});
"""
# Scripts: Cylindria's files and this one inline script (by its hash), nothing else; styles
# inline too (Swagger UI's React sets style attributes); images may be data: URIs (its
# icons); fetches (the document, Try it out) go to Cylindria only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'sha256-"
    + base64.b64encode(hashlib.sha256(INITIALIZER.encode("utf-8")).digest()).decode("ascii")
    + "'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Cylindria API</title>
  <link rel="stylesheet" href="{{ url_for('docs.static', filename='swagger-ui.css') }}">
  <link rel="stylesheet" href="{{ url_for('docs.static', filename='index.css') }}">
  <link rel="icon" type="image/png" sizes="32x32"
        href="{{ url_for('docs.static', filename='favicon-32x32.png') }}">
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{{ url_for('openapi.openapi_json') }}"></div>
  <script src="{{ url_for('docs.static', filename='swagger-ui-bundle.js') }}"></script>
  <script>{{ initializer }}</script>
</body>
</html>
"""


@bp.get("")
def ui():
    """The Swagger UI page."""
    page = render_template_string(PAGE, initializer=Markup(INITIALIZER))
    return Response(page, mimetype="text/html",
                    headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


def init_app(app: Flask) -> None:
    """Serve /docs and its files."""
    app.register_blueprint(bp)
