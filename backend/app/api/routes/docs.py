"""Swagger UI and ReDoc served with their assets from the app itself (the
fastapi-offline package ships the files FastAPI would load from a CDN), so the
docs render without internet access and under a Content-Security-Policy that
allows only this origin. FastAPI's documented way: its own pages turned off
(`docs_url=None`, `redoc_url=None` in app/main.py), these routes instead."""

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import APIRouter
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from app.core.config import settings

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/static"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# The HTML pages, which get the docs' Content-Security-Policy (app/main.py).
PAGES = frozenset({DOCS_URL, REDOC_URL, OAUTH2_REDIRECT_URL})
OPENAPI_URL = f"{settings.API_V1_STR}/openapi.json"

ASSETS_DIR = files("fastapi_offline") / "static"
assets = StaticFiles(directory=str(ASSETS_DIR))
# ReDoc's bundle always shows Redocly's logo from cdn.redoc.ly: an outside
# image the policy blocks (a console error), and offline a failed request.
# Served with an empty src instead, which ReDoc's own error handler hides.
REDOCLY_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
redoc_js = (ASSETS_DIR / "redoc.standalone.js").read_bytes().replace(REDOCLY_LOGO, b"")

# The pages depend on the settings only: built once (a Response is sent as a new
# one each time: middlewares add headers to the one they send).
swagger_ui = bytes(
    get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{settings.PROJECT_NAME} - Swagger UI",
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        # No badge image from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    ).body
)
oauth2_redirect = bytes(get_swagger_ui_oauth2_redirect_html().body)
redoc = bytes(
    get_redoc_html(
        openapi_url=OPENAPI_URL,
        title=f"{settings.PROJECT_NAME} - ReDoc",
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    ).body
)


def inline_script_hashes(*pages: bytes) -> list[str]:
    """CSP sources for the pages' inline scripts (Swagger UI's set-up and the
    OAuth2 redirect), so that no other inline script may run."""
    scripts = [
        script
        for page in pages
        for script in re.findall(rb"<script>(.*?)</script>", page, re.DOTALL)
    ]
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in scripts
    ]


SCRIPT_HASHES = inline_script_hashes(swagger_ui, oauth2_redirect, redoc)

router = APIRouter(tags=["docs"], include_in_schema=False)


@router.get(DOCS_URL)
async def swagger_ui_html() -> HTMLResponse:
    return HTMLResponse(swagger_ui)


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return HTMLResponse(oauth2_redirect)


@router.get(REDOC_URL)
async def redoc_html() -> HTMLResponse:
    return HTMLResponse(redoc)


@router.get(f"{ASSETS_URL}/redoc.standalone.js")  # before the assets' mount
async def redoc_script() -> Response:
    return Response(
        redoc_js,
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=86400"},
    )
