"""HTTPS certificates over ACME: scripts/stack.sh in production mode (PROXY_HTTPS=true,
the files of ../traefik/dynamic) against Pebble, Let's Encrypt's test server,
validating real HTTP-01 and TLS-ALPN-01 challenges on the proxy's ports."""

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
from cryptography import x509
from sqlalchemy import URL

from tests.utils import acme
from tests.utils.acme import (
    ISSUED,
    PEBBLE_ENV,
    dns_names,
    pebble_root,
    write_pebble_config,
)
from tests.utils.servers import free_port, wait_until
from tests.utils.stack import DOMAIN, Stack, new_stack, running, stop

HEALTH = "/api/v1/utils/health-check/"
DASHBOARD_AUTH = ("admin", "dashboard-password")


@dataclass(frozen=True)
class Pebble:
    directory: str
    listener_ca: Path  # signed Pebble's own HTTPS listener: Traefik must trust it
    root: Path  # Pebble's issuing root, from its management API
    log: Path
    http_port: int  # where its validation authority checks HTTP-01
    tls_port: int  # and TLS-ALPN-01

    def issued(self) -> int:
        return self.log.read_text().count(ISSUED)


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    binary = shutil.which("pebble")
    assert binary, "no pebble: bash scripts/install-stack-tools.sh"
    tmp = tmp_path_factory.mktemp("pebble")
    port, management_port = free_port(), free_port()
    http_port, tls_port = free_port(), free_port()
    write_pebble_config(
        tmp,
        ["127.0.0.1", "localhost"],
        listen=f"127.0.0.1:{port}",
        management=f"127.0.0.1:{management_port}",
        http_port=http_port,
        tls_port=tls_port,
    )
    log = tmp / "pebble.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [binary, "-config", str(tmp / "pebble.json")],
            cwd=tmp,
            env=PEBBLE_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        root = pebble_root(f"https://127.0.0.1:{management_port}", tmp / "ca.pem")
        (tmp / "root.pem").write_text(root)
        yield Pebble(
            directory=f"https://127.0.0.1:{port}/dir",
            listener_ca=tmp / "ca.pem",
            root=tmp / "root.pem",
            log=log,
            http_port=http_port,
            tls_port=tls_port,
        )
    finally:
        stop(process)


def https_stack(
    state_dir: Path,
    database_url: URL,
    pebble: Pebble,
    *,
    proxy_port: int | None = None,
    https_port: int | None = None,
    **settings: str,
) -> Stack:
    """stack.sh in production mode with Pebble as its ACME CA. Pebble validates on
    its own ports: a proxy port elsewhere (random by default) cannot answer."""
    return new_stack(
        state_dir,
        database_url,
        proxy_port=proxy_port,
        https_port=https_port,
        PROXY_HTTPS="true",
        ACME_CA_SERVER=pebble.directory,
        ACME_EMAIL="acme@example.com",
        LEGO_CA_CERTIFICATES=str(pebble.listener_ca),
        STACK_WORKERS="1",
        STACK_TRAEFIK_LOG_LEVEL="INFO",
        TRAEFIK_DASHBOARD_USER=DASHBOARD_AUTH[0],
        TRAEFIK_DASHBOARD_PASSWORD_HASH=bcrypt.hashpw(
            DASHBOARD_AUTH[1].encode(), bcrypt.gensalt(rounds=4)
        ).decode(),
        **settings,
    )


def served_certificate(stack: Stack, context: ssl.SSLContext) -> x509.Certificate:
    return acme.served_certificate(stack.https_port, DOMAIN, context)


def acme_certificate(stack: Stack, pebble: Pebble) -> x509.Certificate:
    return acme.acme_certificate(stack.https_port, DOMAIN, pebble.root)


def line_with(text: str, log: str) -> str | None:
    return next((line for line in log.splitlines() if text in line), None)


def traefik_start_error(stack: Stack, text: str) -> str:
    """The first log line with `text` of Traefik started alone with the stack's
    static configuration (stopped again)."""
    log = stack.state_dir / "traefik-alone.log"
    with log.open("w") as out:
        traefik = subprocess.Popen(
            [
                str(Path(stack.env["STACK_VENV"]) / "bin" / "traefik"),
                f"--configFile={stack.state_dir / 'traefik' / 'traefik.yml'}",
            ],
            cwd=stack.state_dir,
            env=stack.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        return wait_until(
            lambda: line_with(text, log.read_text()), 10, f"{text!r} in Traefik's log"
        )
    finally:
        stop(traefik)


def test_tls_alpn_01_certificate_served_and_kept_across_restarts(
    pebble: Pebble, stack_database_url: URL, tmp_path: Path
) -> None:
    """The challenge of docker-compose.yml (only the HTTPS port is where Pebble
    validates), and the production settings around it."""
    stack = https_stack(
        tmp_path / "state", stack_database_url, pebble, https_port=pebble.tls_port
    )
    issued = pebble.issued()
    with running(stack):
        certificate = acme_certificate(stack, pebble)
        assert pebble.issued() == issued + 1
        assert dns_names(certificate) == [DOMAIN]
        acme_json = stack.state_dir / "acme.json"
        assert acme_json.stat().st_mode & 0o777 == 0o600

        verify = ssl.create_default_context(cafile=str(pebble.root))
        https = f"https://{DOMAIN}:{stack.https_port}"
        with httpx.Client(base_url=https, verify=verify, timeout=10) as client:
            response = client.get(HEALTH)
            assert response.json() is True
            assert response.headers["strict-transport-security"].startswith("max-age=")
            assert client.get("/traefik/dashboard/").status_code == 401
            dashboard = client.get("/traefik/dashboard/", auth=DASHBOARD_AUTH)
            assert dashboard.status_code == 200
        redirect = httpx.get(f"http://{DOMAIN}:{stack.proxy_port}{HEALTH}")
        assert redirect.status_code in (301, 308)
        assert redirect.headers["location"] == f"{https}{HEALTH}"

    # A copied or restored acme.json readable by others: Traefik alone refuses it,
    # stack.sh makes it 0600 again, and the restart serves the same certificate.
    acme_json.chmod(0o644)
    assert "permissions 644" in traefik_start_error(stack, "too open, please use 600")
    with running(stack):
        assert acme_json.stat().st_mode & 0o777 == 0o600
        assert acme_certificate(stack, pebble) == certificate
        assert pebble.issued() == issued + 1


def test_http_01_certificate_served(
    pebble: Pebble, stack_database_url: URL, tmp_path: Path
) -> None:
    """ACME_CHALLENGE=http (only the HTTP port is where Pebble validates)."""
    stack = https_stack(
        tmp_path / "state",
        stack_database_url,
        pebble,
        proxy_port=pebble.http_port,
        ACME_CHALLENGE="http",
    )
    issued = pebble.issued()
    with running(stack):
        acme_certificate(stack, pebble)
        assert pebble.issued() == issued + 1
        verify = ssl.create_default_context(cafile=str(pebble.root))
        url = f"https://{DOMAIN}:{stack.https_port}{HEALTH}"
        assert httpx.get(url, verify=verify, timeout=10).json() is True


def test_failed_order_is_logged_and_the_default_certificate_served(
    pebble: Pebble, stack_database_url: URL, tmp_path: Path
) -> None:
    """Pebble cannot reach the challenge (as when DNS or port 443 is wrong)."""
    stack = https_stack(tmp_path / "state", stack_database_url, pebble)
    issued = pebble.issued()
    with running(stack):
        failed = wait_until(
            lambda: line_with(
                "Unable to obtain ACME certificate", stack.log("traefik")
            ),
            30,
            "the failed order in Traefik's log",
        )
        assert " ERR " in failed
        assert f'domains=["{DOMAIN}"]' in failed
        assert "for the tls-alpn-01 challenge" in failed
        assert pebble.issued() == issued
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        default = served_certificate(stack, unverified)
        assert default.subject.rfc4514_string() == "CN=TRAEFIK DEFAULT CERT"
        url = f"https://{DOMAIN}:{stack.https_port}{HEALTH}"
        assert httpx.get(url, verify=False, timeout=10).json() is True
