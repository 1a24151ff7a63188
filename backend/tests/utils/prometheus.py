"""A real Prometheus's HTTP API: instant queries, and waiting for its scrapes."""

from typing import Any

import httpx

from tests.utils.servers import wait_until

Labels = frozenset[tuple[str, str]]


def query(url: str, promql: str, at: float | None = None) -> dict[Labels, float]:
    """An instant query (at `at`, a Unix time, or now): each series' labels -> value."""
    params = {"query": promql} | ({} if at is None else {"time": str(at)})
    answer = httpx.get(f"{url}/api/v1/query", params=params, timeout=10)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()["data"]
    assert data["resultType"] == "vector", data
    return {
        frozenset(series["metric"].items()): float(series["value"][1])
        for series in data["result"]
    }


def by(label: str, result: dict[Labels, float]) -> dict[str, float]:
    """A result of `sum by (label) (...)`, keyed by that label's value."""
    return {dict(labels).get(label, ""): value for labels, value in result.items()}


def counts(label: str, result: dict[Labels, float]) -> dict[str, float]:
    """`by(label, result)` without the series that did not change (value 0)."""
    return {key: value for key, value in by(label, result).items() if value}


def targets(url: str) -> dict[str, list[dict[str, Any]]]:
    """The active scrape targets, by job."""
    answer = httpx.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=10)
    assert answer.status_code == 200, answer.text
    found: dict[str, list[dict[str, Any]]] = {}
    for target in answer.json()["data"]["activeTargets"]:
        found.setdefault(target["labels"]["job"], []).append(target)
    return found


def wait_for_targets_up(url: str, jobs: dict[str, int], timeout: float) -> None:
    """Until each job has that many targets, every one scraped successfully."""

    def all_up() -> bool:
        found = targets(url)
        return all(
            len(found.get(job, [])) == count
            and all(target["health"] == "up" for target in found[job])
            for job, count in jobs.items()
        )

    wait_until(all_up, timeout=timeout, what=f"{jobs} targets up", interval=0.5)


def wait_for_scrape_after(
    url: str, job: str, since: float, timeout: float = 15
) -> dict[str, float]:
    """Until every target of `job` was scraped after `since` (a Unix time): the
    time of each one's latest scrape, by instance."""

    def scraped() -> dict[str, float] | None:
        # Every sample of a scrape has the scrape's time, `up`'s too.
        found = by("instance", query(url, f'timestamp(up{{job="{job}"}})'))
        return found if found and min(found.values()) > since else None

    return wait_until(scraped, timeout, what=f"a scrape of {job}", interval=0.2)


def increase_by(
    url: str,
    label: str,
    series: str,
    first: dict[str, float],
    last: dict[str, float],
) -> dict[str, float]:
    """`sum by (label) (increase(metric{matchers}[window]))` for each target from
    its scrape at `first` to its scrape at `last` (times by instance), added up.
    Exact: increase() extrapolates to the window's edges, and there are scrapes
    there. `series` is `metric{matchers}`."""
    metric, matchers = series.rstrip("}").split("{", 1)
    total: dict[str, float] = {}
    for instance, end in last.items():
        window = f"{round((end - first[instance]) * 1000)}ms"
        selector = f'{metric}{{{matchers},instance="{instance}"}}[{window}] @ {end}'
        found = counts(label, query(url, f"sum by ({label}) (increase({selector}))"))
        for key, value in found.items():
            total[key] = total.get(key, 0) + value
    return total


def scrapes_after(
    url: str, since: float, timeout: float = 15
) -> dict[str, dict[str, float]]:
    """The latest scrape times of the jobs `backend` and `traefik`, by instance,
    once every target's is after `since`."""
    return {
        job: wait_for_scrape_after(url, job, since, timeout)
        for job in ("backend", "traefik")
    }


def answered_between(
    url: str,
    status: int,
    first: dict[str, dict[str, float]],
    last: dict[str, dict[str, float]],
) -> tuple[dict[str, float], dict[str, float]]:
    """The requests answered with `status` between two `scrapes_after`: by route
    template (the app's replicas) and by router (Traefik)."""
    app = f'http_requests_total{{job="backend",status="{status}"}}'
    proxy = f'traefik_router_requests_total{{job="traefik",code="{status}"}}'
    return (
        increase_by(url, "route", app, first["backend"], last["backend"]),
        increase_by(url, "router", proxy, first["traefik"], last["traefik"]),
    )
