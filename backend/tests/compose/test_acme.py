"""The production file's proxy gets its certificate over ACME on a real engine:
Pebble (acme-pebble.yml, tests only) as the CA on the stack's network, validating
the TLS-ALPN-01 challenge of docker-compose.yml at DOMAIN:443, which is the
proxy there. Its certificate and acme.json survive a restart of the proxy."""

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.utils.acme import (
    ISSUED,
    acme_certificate,
    dns_names,
    pebble_root,
    write_pebble_config,
)
from tests.utils.compose import Engine, Stack, production_env, stack
from tests.utils.servers import wait_until

NAME = "fsm-acme"
# Resolves to the proxy on the stack's network only (an alias in acme-pebble.yml);
# Pebble validates over that network and refuses `localhost` for it.
DOMAIN = "app.test"
HTTPS_PORT = 18443  # ports-production.yml
HTTP = "http://127.0.0.1:18080"
PEBBLE_MANAGEMENT = "https://127.0.0.1:18015"  # acme-pebble.yml
HEALTH = "/api/v1/utils/health-check/"


@dataclass(frozen=True)
class AcmeStack:
    stack: Stack
    root: Path  # Pebble's issuing root

    def issued(self) -> int:
        """Certificates Pebble issued since it started."""
        return self.stack.compose("logs", "--no-log-prefix", "pebble").stdout.count(
            ISSUED
        )

    def certificate(self) -> x509.Certificate:
        return acme_certificate(HTTPS_PORT, DOMAIN, self.root, timeout=90)


@pytest.fixture(scope="module")
def acme(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AcmeStack]:
    directory = tmp_path_factory.mktemp("acme")
    env = production_env() | {
        "DOMAIN": DOMAIN,
        "FRONTEND_HOST": f"https://{DOMAIN}",
        "ACME_CA_SERVER": "https://pebble:14000/dir",
    }
    with stack(
        engine,
        directory,
        NAME,
        ["docker-compose.yml", "acme-pebble.yml"],
        "ports-production.yml",
        **env,
    ) as project:
        pebble = directory / "pebble"
        pebble.mkdir()
        write_pebble_config(
            pebble,
            ["pebble", "127.0.0.1"],
            listen="0.0.0.0:14000",
            management="0.0.0.0:15000",
            http_port=80,
            tls_port=443,
            mounted_at="/pebble",
        )
        project.compose("build", timeout=900)
        project.compose("up", "-d", "--wait", timeout=600)
        root = directory / "root.pem"
        root.write_text(pebble_root(PEBBLE_MANAGEMENT, pebble / "ca.pem"))
        yield AcmeStack(project, root)


@pytest.fixture(scope="module")
def certificate(acme: AcmeStack) -> x509.Certificate:
    """The proxy's certificate for DOMAIN, once Pebble has issued it."""
    return acme.certificate()


def https(client: httpx.Client, path: str) -> httpx.Response:
    """GET https://DOMAIN/path on the published port (DOMAIN resolves only
    inside the stack): SNI and the name checked are DOMAIN."""
    return client.get(
        f"https://127.0.0.1:{HTTPS_PORT}{path}",
        headers={"Host": DOMAIN},
        extensions={"sni_hostname": DOMAIN},
    )


def test_certificate_is_pebbles_for_domain_over_tls_alpn_01(
    acme: AcmeStack, certificate: x509.Certificate
) -> None:
    assert dns_names(certificate) == [DOMAIN]
    assert acme.issued() == 1
    logs = acme.stack.compose("logs", "--no-log-prefix", "proxy").stdout
    assert "tls-alpn-01" in logs, logs


@pytest.mark.usefixtures("certificate")
def test_health_check_over_https_with_hsts(acme: AcmeStack) -> None:
    verify = ssl.create_default_context(cafile=str(acme.root))
    with httpx.Client(verify=verify, timeout=10) as client:

        def answered() -> httpx.Response | None:
            # Traefik answers 404 until its own check of the backend passes.
            answer = https(client, HEALTH)
            return None if answer.status_code == 404 else answer

        answer = wait_until(answered, 30, "a backend replica behind the proxy", 0.5)
    assert answer.status_code == 200
    assert answer.json() is True
    assert answer.headers["strict-transport-security"].startswith("max-age=")


@pytest.mark.usefixtures("certificate")
def test_http_redirects_to_https_on_domain() -> None:
    answer = httpx.get(f"{HTTP}{HEALTH}", headers={"Host": DOMAIN}, timeout=10)
    assert answer.status_code in (301, 308)
    assert answer.headers["location"] == f"https://{DOMAIN}{HEALTH}"


def test_acme_json_is_private_and_kept_across_a_restart(
    acme: AcmeStack, certificate: x509.Certificate
) -> None:
    def mode() -> str:
        stat = ("stat", "-c", "%a", "/letsencrypt/acme.json")
        return acme.stack.compose("exec", "-T", "proxy", *stat).stdout.strip()

    assert mode() == "600"
    acme.stack.compose("restart", "proxy", timeout=120)
    again = acme.certificate()
    assert again.serial_number == certificate.serial_number
    assert acme.issued() == 1  # no new order: the certificate came from acme.json
    assert mode() == "600"
