"""Pebble, Let's Encrypt's test ACME server, for the HTTPS tests with Docker and
without it: its configuration and listener certificate (trustme), and the
certificate a proxy serves, checked against Pebble's root."""

import json
import socket
import ssl
from pathlib import Path

import httpx
import trustme
from cryptography import x509

from tests.utils.servers import wait_until

# No random wait before validating, no nonce rejected at random, and every order
# validates its challenge anew (no authorization reuse).
PEBBLE_ENV = {
    "PEBBLE_VA_NOSLEEP": "1",
    "PEBBLE_WFE_NONCEREJECT": "0",
    "PEBBLE_AUTHZREUSE": "0",
}
ISSUED = "Issued certificate serial"  # one line per certificate in Pebble's log


def write_pebble_config(
    directory: Path,
    names: list[str],
    *,
    listen: str,
    management: str,
    http_port: int,
    tls_port: int,
    mounted_at: str | None = None,
) -> None:
    """pebble.json, its listener's certificate for `names` (cert.pem, key.pem) and
    the CA that signed it (ca.pem: the ACME client must trust it) in `directory`;
    `mounted_at`: where Pebble sees `directory` (a container's mount point)."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    listener = ca.issue_cert(*names)
    listener.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    listener.private_key_pem.write_to_path(str(directory / "key.pem"))
    seen = mounted_at or str(directory)
    config = {
        "pebble": {
            "listenAddress": listen,
            "managementListenAddress": management,
            "certificate": f"{seen}/cert.pem",
            "privateKey": f"{seen}/key.pem",
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (directory / "pebble.json").write_text(json.dumps(config))


def pebble_root(management: str, listener_ca: Path, timeout: float = 20) -> str:
    """Pebble's issuing root (PEM), from its management API at `management`
    (https://HOST:PORT) once it answers."""
    verify = ssl.create_default_context(cafile=str(listener_ca))
    with httpx.Client(verify=verify, timeout=5) as client:

        def root() -> str | None:
            try:
                return client.get(f"{management}/roots/0").raise_for_status().text
            except httpx.HTTPError:
                return None

        return wait_until(root, timeout, "Pebble's root", interval=0.2)


def served_certificate(
    port: int, domain: str, context: ssl.SSLContext
) -> x509.Certificate:
    """The certificate a proxy on 127.0.0.1:`port` serves for SNI `domain` (the
    handshake verifies it with `context`)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=domain) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def acme_certificate(
    port: int, domain: str, root: Path, timeout: float = 60
) -> x509.Certificate:
    """The certificate from Pebble once the proxy serves it: its chain verifies
    against Pebble's `root` and its name matches `domain`."""
    context = ssl.create_default_context(cafile=str(root))

    def verified() -> x509.Certificate | None:
        try:
            return served_certificate(port, domain, context)
        except ssl.SSLCertVerificationError:
            return None  # Traefik's default certificate, until the order is done
        except (ConnectionError, ssl.SSLEOFError):
            return None  # the proxy (re)starting: Docker's port accepts, then resets

    return wait_until(verified, timeout, "a certificate from Pebble", interval=0.2)


def dns_names(certificate: x509.Certificate) -> list[str]:
    return certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
