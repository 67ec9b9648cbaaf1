"""``GET /docs``: Swagger UI over the OpenAPI document, its assets served from the
swagger-ui-py package (no CDN: the page works offline).

The page lists what the reader may call: it loads ``/docs/openapi.json``, the document cut
down to the caller's actions, and sends along the credential entered in Swagger UI's
"Authorize" dialog (kept in the browser's storage), so a reader who authorizes and reloads
sees their own actions. ``/openapi.json`` itself always documents every action.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, send_from_directory

PREFIX = "/api/v1/actions/"
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} · API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" href="/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    // The credential of the Authorize dialog, for the document request too: the listing
    // is the reader's own.
    function credential(request) {{
      let saved = {{}};
      try {{ saved = JSON.parse(localStorage.getItem("authorized") || "{{}}"); }} catch (e) {{}}
      if (saved.bearer && saved.bearer.value && !request.headers.Authorization) {{
        request.headers.Authorization = "Bearer " + saved.bearer.value;
      }} else if (saved.apiKey && saved.apiKey.value && !request.headers["X-API-Key"]) {{
        request.headers["X-API-Key"] = saved.apiKey.value;
      }}
      return request;
    }}
    window.ui = SwaggerUIBundle({{
      url: "/docs/openapi.json",
      dom_id: "#ui",
      deepLinking: true,
      persistAuthorization: true,
      displayRequestDuration: true,
      requestInterceptor: credential,
    }});
  </script>
</body>
</html>
"""


def assets_dir() -> Path:
    import swagger_ui

    return Path(swagger_ui.__file__).parent / "static"


def for_caller(document: Mapping[str, Any], allowed: Collection[str]) -> dict[str, Any]:
    """``document`` with only the action operations named in ``allowed`` (other paths,
    health and the listing, stay)."""
    trimmed = dict(document)  # a shallow copy: only paths is replaced
    trimmed["paths"] = {
        path: item
        for path, item in document["paths"].items()
        if not path.startswith(PREFIX) or path[len(PREFIX) :] in allowed
    }
    return trimmed


def docs_blueprint(
    title: str, document: Callable[[], dict[str, Any]], allowed: Callable[[], Collection[str]]
) -> Blueprint:
    """The page, its assets, and the caller's document (``allowed``: the action names the
    current request's caller may call)."""
    bp = Blueprint("switchboard_docs", __name__)
    page = PAGE.format(title=_escape(title))
    static = assets_dir()

    @bp.get("/docs")
    def docs_page() -> Response:
        return Response(page, mimetype="text/html")

    @bp.get("/docs/assets/<name>")
    def docs_asset(name: str) -> Response:
        if name not in ASSETS:
            abort(404)
        return send_from_directory(static, name, max_age=86400)

    @bp.get("/docs/openapi.json")
    def docs_document() -> Response:
        body = json.dumps(for_caller(document(), allowed()), separators=(",", ":"))
        return Response(body, mimetype="application/json")

    return bp


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
