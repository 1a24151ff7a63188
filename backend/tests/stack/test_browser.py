"""Swagger UI in a real browser (headless Debian Chromium driven by Playwright)
through the proxy: authorize with the OAuth2 password form, run "read user me".

The page loads Swagger UI's script and style from a CDN; with no network here,
the browser gets the same files (swagger-ui-dist 5, as FastAPI asks for) from the
swagger-ui-bundle-v2 package. Every other request must stay on the stack."""

import importlib.resources
import re
from pathlib import Path

import pytest
from playwright.sync_api import Route, expect, sync_playwright

from tests.stack.conftest import SUPERUSER, Stack

BACKEND_DIR = Path(__file__).resolve().parents[2]
SCREENSHOT = BACKEND_DIR / "test-artifacts" / "swagger-users-me.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SWAGGER_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"
FAVICON = "https://fastapi.tiangolo.com/img/favicon.png"


def swagger_ui_dist() -> Path:
    try:
        vendor = importlib.resources.files("swagger_ui_bundle") / "vendor"
    except ModuleNotFoundError:
        pytest.fail("Swagger UI's files are missing: uv add --dev swagger-ui-bundle-v2")
    (dist,) = [
        Path(str(entry))
        for entry in vendor.iterdir()
        if re.fullmatch(r"swagger-ui-5\.[0-9.]+", entry.name)
    ]
    return dist


def test_swagger_ui_authorize_and_read_user_me(stack: Stack) -> None:
    dist = swagger_ui_dist()
    outside: list[str] = []

    def offline(route: Route) -> None:
        url = route.request.url
        if url.startswith(SWAGGER_CDN):
            route.fulfill(path=dist / url.removeprefix(SWAGGER_CDN).split("?")[0])
        elif url == FAVICON:
            route.fulfill(status=404)
        else:
            outside.append(url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route(re.compile(r"^https?://(?!localhost[:/]).*"), offline)
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"{stack.url}/docs")
            expect(page.locator(".swagger-ui .info .title")).to_contain_text(
                "FastAPI SQLModel Backend"
            )

            # Authorize: the OAuth2 password flow posts to /api/v1/login/access-token.
            page.locator(".auth-wrapper button.authorize").click()
            dialog = page.locator(".auth-container").first
            dialog.locator("#oauth_username").fill(SUPERUSER[0])
            dialog.locator("#oauth_password").fill(SUPERUSER[1])
            with page.expect_response("**/api/v1/login/access-token") as login:
                dialog.locator("button.authorize").click()
            assert login.value.status == 200
            expect(dialog.locator("button", has_text="Logout")).to_be_visible()
            page.locator(".dialog-ux button.btn-done", has_text="Close").click()

            # "read user me": Try it out, Execute.
            operation = page.locator("#operations-users-users-read_user_me")
            operation.locator(".opblock-summary").click()
            operation.locator("button.try-out__btn").click()
            with page.expect_response("**/api/v1/users/me") as me:
                operation.locator("button.execute").click()
            assert me.value.status == 200
            assert me.value.request.headers["authorization"].startswith("Bearer ")
            live = operation.locator(".live-responses-table .response")
            expect(live.locator(".response-col_status")).to_have_text("200")
            body = live.locator(".response-col_description pre.microlight").first
            expect(body).to_contain_text(f'"email": "{SUPERUSER[0]}"')
            expect(body).to_contain_text('"is_superuser": true')

            SCREENSHOT.parent.mkdir(exist_ok=True)
            operation.scroll_into_view_if_needed()
            operation.screenshot(path=SCREENSHOT)
        finally:
            browser.close()

    assert outside == []
    assert SCREENSHOT.stat().st_size > 10_000
