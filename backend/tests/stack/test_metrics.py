"""Metrics in the stack: the app's /metrics and Traefik's own are served off the
public entrypoints only, and a real Prometheus (Debian's package, started by
stack.sh) scrapes both: PromQL over its HTTP API returns the traffic a test sent."""

import time
import uuid

import httpx

from tests.utils import prometheus
from tests.utils.stack import DOMAIN, Stack

TRAEFIK_404 = "404 page not found\n"
ROUTER = "backend@file"


def is_prometheus_text(response: httpx.Response) -> bool:
    return "# TYPE " in response.text


def test_metrics_are_not_served_through_the_public_entrypoints(stack: Stack) -> None:
    # Each replica serves the app's metrics itself (Prometheus scrapes it there).
    for replica in (1, 2):
        direct = httpx.get(f"{stack.backend_url(replica)}/metrics", timeout=10)
        assert direct.status_code == 200
        assert "# TYPE http_requests_total counter" in direct.text

    # Traefik's own metrics are on its internal entrypoint, and nothing else is.
    traefik = httpx.get(stack.metrics_url, timeout=10)
    assert traefik.status_code == 200
    assert "traefik_entrypoint_requests_total" in traefik.text
    internal = httpx.get(
        stack.metrics_url.replace("/metrics", "/api/v1/utils/health-check/"),
        headers={"Host": DOMAIN},
    )
    assert (internal.status_code, internal.text) == (404, TRAEFIK_404)

    # Through the API's and the dashboard's entrypoints: Traefik's own 404 (no
    # router matches /metrics); the request never reaches a replica.
    for url in (stack.url, stack.dashboard_url):
        for path in ("/metrics", "/metrics/"):
            response = httpx.get(
                f"{url}{path}", headers={"X-Request-ID": "metrics-through-proxy"}
            )
            assert (response.status_code, response.text) == (404, TRAEFIK_404), url
    replica_logs = stack.log("backend-1") + stack.log("backend-2")
    assert "metrics-through-proxy" not in replica_logs

    # Adminer's entrypoint sends every path of its host to Adminer: its page.
    adminer = httpx.get(f"{stack.adminer_url}/metrics")
    assert "<title>Login - Adminer</title>" in adminer.text
    assert not is_prometheus_text(adminer)


def send(client: httpx.Client, path: str, times: int, status: int) -> None:
    for _ in range(times):
        assert client.get(path).status_code == status, path


def test_prometheus_counts_the_traffic_sent_by_route(stack: Stack) -> None:
    """Prometheus scrapes both replicas (each sums its 2 gunicorn workers) and
    Traefik: the requests sent through the proxy come back by route template
    and by router, exactly."""
    url = stack.prometheus_url
    prometheus.wait_for_targets_up(url, {"backend": 2, "traefik": 1}, timeout=30)
    item = f"/api/v1/items/{uuid.uuid4()}"
    traffic = {
        "/api/v1/items/{id}": (item, 7),
        "/api/v1/users/me": ("/api/v1/users/me", 5),
    }
    sent = sum(times for _, times in traffic.values())
    with httpx.Client(base_url=stack.url, timeout=10) as proxy:
        # Each series exists before the counted traffic, on each replica (a
        # counter's first sample is no increase); a scrape of that state is
        # the baseline.
        for path, _ in traffic.values():
            send(proxy, path, 1, 401)
            for replica in (1, 2):
                assert (
                    httpx.get(f"{stack.backend_url(replica)}{path}").status_code == 401
                )
        first = prometheus.scrapes_after(url, time.time())
        baseline = time.time()
        for path, times in traffic.values():
            send(proxy, path, times, 401)
        send(proxy, "/not-routed", 3, 404)
        last = prometheus.scrapes_after(url, time.time())

    # The request rate by route (the app) and by router (Traefik), as an
    # operator asks for it, over the window between those scrapes.
    routes, routers = prometheus.answered_between(url, 401, first, last)
    assert routes == {route: times for route, (_, times) in traffic.items()}
    assert routers == {ROUTER: sent}

    # By status at the entrypoint (Traefik's 404s never reach a router).
    entrypoint = 'traefik_entrypoint_requests_total{entrypoint="web"}'
    since = prometheus.query(
        url, f"sum by (code) ({entrypoint} - {entrypoint} @ {baseline})"
    )
    assert prometheus.counts("code", since) == {"401": sent, "404": 3}
