"""The API docs in a real browser (headless Debian Chromium driven by Playwright)
with the network limited to this machine: Swagger UI and ReDoc render from the
app's own assets, directly and through the proxy, under their
Content-Security-Policy, with no console error; Swagger UI's "Authorize" and
"Try it out" on read user me work."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, Route, expect, sync_playwright

from tests.utils.stack import SUPERUSER, Stack

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
# Everything but this machine: a CDN, a font service, a validator badge.
OUTSIDE = re.compile(r"^(?!https?://(localhost|127\.0\.0\.1)[:/]).*")


@dataclass
class Browsing:
    page: Page
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def offline_browser() -> Iterator[Browsing]:
    """A page in Chromium that cannot reach beyond loopback (such requests are
    aborted and noted), noting console errors (a blocked resource, a CSP
    violation) and uncaught page errors."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(15_000)
            browsing = Browsing(page)

            def offline(route: Route) -> None:
                browsing.outside.append(route.request.url)
                route.abort()

            def console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    browsing.errors.append(message.text)

            context.route(OUTSIDE, offline)
            page.on("console", console)
            page.on("pageerror", lambda error: browsing.errors.append(str(error)))
            yield browsing
        finally:
            browser.close()


@pytest.mark.parametrize("through", ["proxy", "direct"])
def test_docs_render_offline(stack: Stack, through: str) -> None:
    base = stack.url if through == "proxy" else stack.backend_url(1)
    with offline_browser() as browsing:
        page = browsing.page
        page.goto(f"{base}/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text(
            "FastAPI SQLModel Backend"
        )
        expect(page.locator("#operations-users-users-read_user_me")).to_be_visible()
        assert page.locator(".opblock").count() >= 30

        page.goto(f"{base}/redoc")
        expect(page.get_by_role("heading", name="Read User Me").first).to_be_attached()
        expect(page.locator("[data-section-id^='tag/']").first).to_be_attached()

    assert browsing.outside == []
    assert browsing.errors == []


def test_swagger_ui_authorize_and_read_user_me(stack: Stack) -> None:
    with offline_browser() as browsing:
        page = browsing.page
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

    assert browsing.outside == []
    assert browsing.errors == []
    assert SCREENSHOT.stat().st_size > 10_000
