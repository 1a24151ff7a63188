"""HTTPS certificates over ACME: scripts/stack.sh in production mode (PROXY_HTTPS=true,
the files of ../traefik/dynamic) against Pebble, Let's Encrypt's test server,
validating real HTTP-01 and TLS-ALPN-01 challenges on the proxy's ports."""

import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
import trustme
from cryptography import x509
from sqlalchemy import URL

from tests.conftest import free_port, wait_until
from tests.stack.conftest import DOMAIN, Stack, new_stack, running, stop

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
        return self.log.read_text().count("Issued certificate serial")


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    binary = shutil.which("pebble")
    assert binary, "no pebble: bash scripts/install-stack-tools.sh"
    tmp = tmp_path_factory.mktemp("pebble")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    listener = ca.issue_cert("127.0.0.1", "localhost")
    listener.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    listener.private_key_pem.write_to_path(str(tmp / "key.pem"))
    port, management_port = free_port(), free_port()
    http_port, tls_port = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{management_port}",
            "certificate": str(tmp / "cert.pem"),
            "privateKey": str(tmp / "key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (tmp / "pebble.json").write_text(json.dumps(config))
    log = tmp / "pebble.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [binary, "-config", str(tmp / "pebble.json")],
            cwd=tmp,
            # No random wait before validating, no nonce rejected at random, and
            # every order validates its challenge anew (no authorization reuse).
            env={
                "PEBBLE_VA_NOSLEEP": "1",
                "PEBBLE_WFE_NONCEREJECT": "0",
                "PEBBLE_AUTHZREUSE": "0",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        verify = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
        with httpx.Client(verify=verify, timeout=5) as client:

            def root() -> str | None:
                try:
                    return client.get(
                        f"https://127.0.0.1:{management_port}/roots/0"
                    ).text
                except httpx.TransportError:
                    return None

            (tmp / "root.pem").write_text(wait_until(root, 10, "Pebble"))
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
    """The certificate the proxy serves for DOMAIN (the handshake verifies it with
    `context`)."""
    with (
        socket.create_connection(("127.0.0.1", stack.https_port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=DOMAIN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def acme_certificate(stack: Stack, pebble: Pebble) -> x509.Certificate:
    """The certificate from Pebble once Traefik serves it: its chain verifies against
    Pebble's root and its name matches DOMAIN."""
    context = ssl.create_default_context(cafile=str(pebble.root))

    def verified() -> x509.Certificate | None:
        try:
            return served_certificate(stack, context)
        except ssl.SSLCertVerificationError:
            return None  # Traefik's default certificate, until the order is done

    return wait_until(verified, 60, "a certificate from Pebble", interval=0.2)


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
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        assert names == [DOMAIN]
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
