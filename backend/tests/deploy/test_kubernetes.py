"""The Kubernetes manifests (deploy/kubernetes/): each valid against the
Kubernetes API's schemas (kubernetes-validate, strict), and wired to what the app
really serves, runs and reads. No cluster runs here: nothing is applied."""

import ipaddress
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from gunicorn.app.wsgiapp import WSGIApplication
from gunicorn.config import Config as GunicornConfig
from httpx import AsyncClient
from pydantic import ValidationError
from sqlalchemy import URL
from sqlmodel.ext.asyncio.session import AsyncSession
from typer.testing import CliRunner

from app.core.config import SECRET_SETTINGS, Settings
from app.core.db import create_engine
from manage import cli
from tests.utils.api import client_using
from tests.utils.servers import free_port

REPO = Path(__file__).resolve().parents[3]
BACKEND = REPO / "backend"
MANIFESTS = REPO / "deploy" / "kubernetes"
FILES = sorted(MANIFESTS.rglob("*.yaml"))
# The oldest and newest Kubernetes releases whose schemas kubernetes-validate
# (its version locked in uv.lock) ships.
KUBERNETES_VERSIONS = ("1.32", "1.37")
# PostgreSQL's default max_connections; the backend at its peak leaves this
# many for the worker, the migration Job and an operator's psql.
POSTGRES_MAX_CONNECTIONS = 100
CONNECTIONS_LEFT_FOR_OTHERS = 30
Resource = dict[str, Any]


def documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def by_kind_and_name() -> dict[tuple[str, str], Resource]:
    found: dict[tuple[str, str], Resource] = {}
    for path in FILES:
        for doc in documents(path):
            metadata = doc["metadata"]
            key = (doc["kind"], metadata.get("name") or metadata["generateName"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


RESOURCES = by_kind_and_name()
CONFIG = RESOURCES["ConfigMap", "backend-config"]
SECRET = RESOURCES["Secret", "backend-secrets"]
BACKEND_DEPLOYMENT = RESOURCES["Deployment", "backend"]
SERVICE = RESOURCES["Service", "backend"]
INGRESS = RESOURCES["Ingress", "backend"]
PDB = RESOURCES["PodDisruptionBudget", "backend"]
HPA = RESOURCES["HorizontalPodAutoscaler", "backend"]
# Every pod that runs the backend's image: the API, the worker, the migration Job.
POD_TEMPLATES = {
    "backend": BACKEND_DEPLOYMENT["spec"]["template"],
    "worker": RESOURCES["Deployment", "worker"]["spec"]["template"],
    "migrate": RESOURCES["Job", "backend-migrate-"]["spec"]["template"],
}
BACKEND_CONTAINER = POD_TEMPLATES["backend"]["spec"]["containers"][0]


def container(pod: str) -> dict[str, Any]:
    (only,) = POD_TEMPLATES[pod]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


def probe_path(probe: str) -> str:
    path = BACKEND_CONTAINER[probe]["httpGet"]["path"]
    assert isinstance(path, str)
    return path


def dockerfile_cmd() -> list[str]:
    dockerfile = (BACKEND / "Dockerfile").read_text().replace("\\\n", "")
    match = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert match, "no exec-form CMD in the Dockerfile"
    cmd: list[str] = json.loads(match.group(1))
    return cmd


# gunicorn's (gunicorn.conf.py's), read by the API's pods only.
GUNICORN_VARIABLES = {"WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR"}


def settings_variables(spec: dict[str, Any]) -> list[dict[str, str]]:
    return [var for var in spec["env"] if var["name"] not in GUNICORN_VARIABLES]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_valid_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    for doc in documents(path):
        # Strict: an unknown field (a typo such as `readinesProbe`) fails too.
        assert kubernetes_validate.validate(doc, version, strict=True) == version


def test_every_resource_the_deployment_needs() -> None:
    assert sorted(kind for kind, _ in RESOURCES) == [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "Job",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]


class TestProbes:
    @pytest.mark.parametrize(
        "probe", ["startupProbe", "readinessProbe", "livenessProbe"]
    )
    async def test_probe_gets_200_without_a_token(
        self, client: AsyncClient, probe: str
    ) -> None:
        response = await client.get(probe_path(probe))
        assert response.status_code == 200, response.text
        port = BACKEND_CONTAINER[probe]["httpGet"]["port"]
        assert port in {p["name"] for p in BACKEND_CONTAINER["ports"]}

    async def test_database_down_takes_pods_out_of_service_without_restarts(
        self, database_url: URL
    ) -> None:
        engine = create_engine(database_url.set(host="127.0.0.1", port=free_port()))

        async def unreachable_session() -> AsyncIterator[AsyncSession]:
            async with AsyncSession(engine) as session:
                yield session

        async with client_using(unreachable_session) as client:
            answers = {
                probe: (await client.get(probe_path(probe))).status_code
                for probe in ("startupProbe", "readinessProbe", "livenessProbe")
            }
        await engine.dispose()
        assert answers == {
            "startupProbe": 200,
            "readinessProbe": 503,
            "livenessProbe": 200,
        }


class TestServer:
    @pytest.fixture
    def gunicorn(self, monkeypatch: pytest.MonkeyPatch) -> GunicornConfig:
        """gunicorn's settings as the image starts it: its CMD, and the
        gunicorn.conf.py in its working directory."""
        monkeypatch.chdir(BACKEND)
        monkeypatch.setattr(sys, "argv", dockerfile_cmd())
        config: GunicornConfig = WSGIApplication().cfg
        return config

    def test_backend_runs_the_image_command(self) -> None:
        assert "command" not in BACKEND_CONTAINER
        assert "args" not in BACKEND_CONTAINER
        assert dockerfile_cmd()[0] == "gunicorn"

    def test_grace_period_covers_the_prestop_sleep_and_gunicorn_graceful_timeout(
        self, gunicorn: GunicornConfig
    ) -> None:
        pod = POD_TEMPLATES["backend"]["spec"]
        sleep = BACKEND_CONTAINER["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert sleep >= 5  # long enough for the endpoints to drop the pod
        assert pod["terminationGracePeriodSeconds"] > sleep + gunicorn.graceful_timeout

    def test_container_port_is_where_gunicorn_listens(
        self, gunicorn: GunicornConfig
    ) -> None:
        ((host, port),) = (bind.rsplit(":", 1) for bind in gunicorn.bind)
        assert host == "0.0.0.0"
        assert [p["containerPort"] for p in BACKEND_CONTAINER["ports"]] == [int(port)]

    def test_rolling_update_never_drops_below_the_wanted_replicas(self) -> None:
        rolling = BACKEND_DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1


class TestCommands:
    def test_migration_job_runs_what_compose_prestart_runs(self) -> None:
        compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
        command = container("migrate")["command"]
        assert command == compose["services"]["prestart"]["command"]
        assert command[0] == "bash" and (BACKEND / command[1]).is_file()
        spec = RESOURCES["Job", "backend-migrate-"]["spec"]
        assert POD_TEMPLATES["migrate"]["spec"]["restartPolicy"] == "Never"
        assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0

    def test_worker_runs_a_management_command(self) -> None:
        python, script, *arguments = container("worker")["command"]
        assert [python, script] == ["python", "manage.py"]
        result = CliRunner().invoke(cli, [*arguments, "--help"])
        assert result.exit_code == 0, result.output


class TestConfiguration:
    def test_configmap_holds_only_settings(self) -> None:
        unknown = set(CONFIG["data"]) - set(Settings.model_fields)
        assert not unknown, f"not settings of app.core.config: {unknown}"
        assert not set(CONFIG["data"]) & set(SECRET_SETTINGS)
        for pod in POD_TEMPLATES:
            (source,) = container(pod)["envFrom"]
            assert source == {"configMapRef": {"name": CONFIG["metadata"]["name"]}}

    @pytest.mark.parametrize("pod", POD_TEMPLATES)
    def test_secret_files_are_secret_settings_from_the_secret(self, pod: str) -> None:
        spec = POD_TEMPLATES[pod]["spec"]
        (secret_volume,) = (v for v in spec["volumes"] if "secret" in v)
        assert secret_volume["secret"]["secretName"] == SECRET["metadata"]["name"]
        (mount,) = (
            m
            for m in container(pod)["volumeMounts"]
            if m["name"] == secret_volume["name"]
        )
        files = {
            var["name"].removesuffix("_FILE"): Path(var["value"])
            for var in container(pod)["env"]
            if var["name"].endswith("_FILE")
        }
        assert set(files) <= set(SECRET_SETTINGS)
        assert {path.parent for path in files.values()} == {Path(mount["mountPath"])}
        assert {path.name for path in files.values()} == set(SECRET["stringData"])

    @pytest.mark.parametrize("pod", ["worker", "migrate"])
    def test_pods_read_the_same_settings_and_image(self, pod: str) -> None:
        for key in ("image", "envFrom", "volumeMounts", "securityContext"):
            assert container(pod)[key] == BACKEND_CONTAINER[key], key
        assert settings_variables(container(pod)) == settings_variables(
            BACKEND_CONTAINER
        )
        backend, other = POD_TEMPLATES["backend"]["spec"], POD_TEMPLATES[pod]["spec"]
        assert other["volumes"] == backend["volumes"]
        assert other["securityContext"] == backend["securityContext"]

    def pod_settings(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, secrets: dict[str, str]
    ) -> Settings:
        """The settings a backend pod starts with: the ConfigMap's variables,
        its own, and the Secret's keys as files."""
        for name in Settings.model_fields:
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(f"{name}_FILE", raising=False)
        for key, value in secrets.items():
            (tmp_path / key).write_text(value + "\n")
        (mount,) = (
            m["mountPath"]
            for m in BACKEND_CONTAINER["volumeMounts"]
            if m["name"] == "secrets"
        )
        for name, value in CONFIG["data"].items():
            monkeypatch.setenv(name, value)
        for var in BACKEND_CONTAINER["env"]:
            monkeypatch.setenv(var["name"], var["value"].replace(mount, str(tmp_path)))
        return Settings(_env_file=None)

    def test_the_example_secret_is_refused_until_replaced(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        with pytest.raises(ValidationError, match='is "changethis"'):
            self.pod_settings(monkeypatch, tmp_path, SECRET["stringData"])
        replaced = {
            key: f"real-{key}-0123456789abcdef0123456789"
            for key in SECRET["stringData"]
        }
        settings = self.pod_settings(monkeypatch, tmp_path, replaced)
        assert settings.ENVIRONMENT == "production"
        assert settings.SECRET_KEY == replaced["secret_key"]
        url = settings.SQLALCHEMY_DATABASE_URI
        assert url.host == CONFIG["data"]["POSTGRES_SERVER"]
        assert url.password == replaced["postgres_password"]

    def test_only_the_pod_network_may_set_forwarded_headers(self) -> None:
        value = CONFIG["data"]["FORWARDED_ALLOW_IPS"]
        assert "*" not in value
        assert all(ipaddress.ip_network(net).is_private for net in value.split(","))
        # gunicorn refuses what it cannot parse, and starts the pod with none.
        config = GunicornConfig()
        config.set("forwarded_allow_ips", value)
        assert config.forwarded_allow_ips == value.split(",")

    def test_database_connections_at_the_peak_fit_postgres_defaults(self) -> None:
        pods = (
            HPA["spec"]["maxReplicas"]
            + BACKEND_DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        )
        (workers,) = (
            int(var["value"])
            for var in BACKEND_CONTAINER["env"]
            if var["name"] == "WEB_CONCURRENCY"
        )
        per_worker = int(CONFIG["data"]["DB_POOL_SIZE"]) + int(
            CONFIG["data"]["DB_MAX_OVERFLOW"]
        )
        assert (
            pods * workers * per_worker
            <= POSTGRES_MAX_CONNECTIONS - CONNECTIONS_LEFT_FOR_OTHERS
        )


class TestSecurity:
    @pytest.mark.parametrize("pod", POD_TEMPLATES)
    def test_non_root_read_only_no_capabilities(self, pod: str) -> None:
        spec = POD_TEMPLATES[pod]["spec"]
        uid = re.search(r"--uid (\d+)", (BACKEND / "Dockerfile").read_text())
        assert uid
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == int(uid.group(1))
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        # Service links would add variables such as POSTGRES_PORT=tcp://...
        assert spec["enableServiceLinks"] is False
        context = container(pod)["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        # gunicorn writes its workers' heartbeat files to /tmp.
        (tmp,) = (m for m in container(pod)["volumeMounts"] if m["mountPath"] == "/tmp")
        (volume,) = (v for v in spec["volumes"] if v["name"] == tmp["name"])
        assert "emptyDir" in volume and not tmp.get("readOnly")

    def test_metrics_files_go_to_a_writable_volume_on_disk(self) -> None:
        """prometheus-client's multiprocess files (gunicorn.conf.py): a directory
        of their own, not the memory-backed /tmp, where they would count against
        the memory limit and outgrow it as workers restart."""
        variables = {var["name"]: var["value"] for var in BACKEND_CONTAINER["env"]}
        directory = variables["PROMETHEUS_MULTIPROC_DIR"]
        (mount,) = (
            m for m in BACKEND_CONTAINER["volumeMounts"] if m["mountPath"] == directory
        )
        spec = POD_TEMPLATES["backend"]["spec"]
        (volume,) = (v for v in spec["volumes"] if v["name"] == mount["name"])
        assert not mount.get("readOnly")
        assert "medium" not in volume["emptyDir"] and volume["emptyDir"]["sizeLimit"]

    def test_every_container_has_requests_and_limits(self) -> None:
        for pod in POD_TEMPLATES:
            resources = container(pod)["resources"]
            assert (
                set(resources["requests"])
                == set(resources["limits"])
                == {"cpu", "memory"}
            )


class TestRouting:
    def test_service_selects_the_backend_pods_only(self) -> None:
        selector = SERVICE["spec"]["selector"]
        for pod, template in POD_TEMPLATES.items():
            assert selects(selector, template["metadata"]["labels"]) == (
                pod == "backend"
            )
        (port,) = SERVICE["spec"]["ports"]
        assert port["targetPort"] in {p["name"] for p in BACKEND_CONTAINER["ports"]}

    def test_deployment_selector_matches_its_pods(self) -> None:
        for name in ("backend", "worker"):
            deployment = RESOURCES["Deployment", name]
            assert selects(
                deployment["spec"]["selector"]["matchLabels"],
                deployment["spec"]["template"]["metadata"]["labels"],
            )

    def test_ingress_sends_the_compose_router_paths_to_the_service(self) -> None:
        assert INGRESS["spec"]["ingressClassName"] == "traefik"
        (rule,) = INGRESS["spec"]["rules"]
        (service_port,) = SERVICE["spec"]["ports"]
        paths = set()
        for path in rule["http"]["paths"]:
            service = path["backend"]["service"]
            assert service == {
                "name": SERVICE["metadata"]["name"],
                "port": {"name": service_port["name"]},
            }
            paths.add((path["pathType"], path["path"]))
        routing = (REPO / "traefik" / "dynamic" / "routing.yml").read_text()
        router_rule = routing.split("    backend:\n", 1)[1].split("entryPoints", 1)[0]
        compose_paths = {
            ("Exact" if matcher == "Path" else "Prefix", path)
            for matcher, path in re.findall(
                r"(PathPrefix|Path)\(`([^`]+)`\)", router_rule
            )
        }
        assert paths == compose_paths
        # The app's /metrics is scraped from each pod, never served by the Ingress.
        assert not any(
            path == "/metrics" if kind == "Exact" else path in ("/", "/metrics")
            for kind, path in paths
        )

    def test_disruption_budget_and_autoscaler_keep_a_backend_up(self) -> None:
        labels = POD_TEMPLATES["backend"]["metadata"]["labels"]
        assert selects(PDB["spec"]["selector"]["matchLabels"], labels)
        assert PDB["spec"]["minAvailable"] == 1
        assert HPA["spec"]["minReplicas"] > PDB["spec"]["minAvailable"]
        assert HPA["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "backend",
        }
        (metric,) = HPA["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        # The autoscaler owns the count: `kubectl apply` must not reset it.
        assert "replicas" not in BACKEND_DEPLOYMENT["spec"]

    def test_image_is_the_one_compose_builds_with_a_release_tag(self) -> None:
        compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
        compose_image = compose["services"]["backend"]["image"]
        default = re.match(r"\$\{DOCKER_IMAGE_BACKEND:-([^}]+)\}", compose_image)
        assert default
        image = BACKEND_CONTAINER["image"]
        repository, tag = image.rsplit(":", 1)
        assert repository.rsplit("/", 1)[-1] == default.group(1)
        # A rolling update needs a new tag; nodes keep a `latest` they pulled.
        assert tag != "latest"


@pytest.mark.parametrize("readme", ["README.md", "backend/README.md"])
def test_the_readme_commands_name_the_files_that_exist(readme: str) -> None:
    named = set(re.findall(r"deploy/kubernetes/[\w./-]*", (REPO / readme).read_text()))
    assert named, "no manifest named"
    assert [name for name in named if not (REPO / name).exists()] == []
