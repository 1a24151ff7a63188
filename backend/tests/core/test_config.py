from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.config import BACKEND_DIR, SECRET_SETTINGS, Settings

STRONG = "s" * 40


def make_settings(monkeypatch: pytest.MonkeyPatch, **values: Any) -> Settings:
    """Settings from these values only: no .env file, no database variables from the environment."""
    for name in (
        "DATABASE_URL",
        "POSTGRES_SERVER",
        "POSTGRES_DB",
        "ENVIRONMENT",
        "SECRET_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    return Settings(_env_file=None, **values)


PRODUCTION = {
    "ENVIRONMENT": "production",
    "POSTGRES_SERVER": "db",
    "SECRET_KEY": STRONG,
    "FIRST_SUPERUSER_PASSWORD": STRONG,
    "POSTGRES_PASSWORD": STRONG,
}


def production(monkeypatch: pytest.MonkeyPatch, **values: Any) -> Settings:
    """Valid production settings, with `values` instead (None: left unset)."""
    merged = {**PRODUCTION, **values}
    return make_settings(
        monkeypatch,
        **{name: value for name, value in merged.items() if value is not None},
    )


class TestDatabaseUrl:
    def test_database_url_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        settings = make_settings(
            monkeypatch,
            DATABASE_URL="postgresql://u:p@dbhost:6543/main",
            POSTGRES_SERVER="other",
        )
        url = settings.SQLALCHEMY_DATABASE_URI
        assert (url.drivername, url.host, url.port, url.database) == (
            "postgresql+psycopg",
            "dbhost",
            6543,
            "main",
        )

    def test_plain_sqlite_url_gets_async_driver(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        settings = make_settings(monkeypatch, DATABASE_URL="sqlite:///data.db")
        assert settings.SQLALCHEMY_DATABASE_URI.drivername == "sqlite+aiosqlite"

    def test_postgres_variables_build_url(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        settings = make_settings(
            monkeypatch,
            POSTGRES_SERVER="db",
            POSTGRES_PORT=5433,
            POSTGRES_USER="app",
            POSTGRES_PASSWORD="p@ss/word",
            POSTGRES_DB="appdb",
        )
        url = settings.SQLALCHEMY_DATABASE_URI
        assert url.drivername == "postgresql+psycopg"
        assert (url.host, url.port, url.username, url.password, url.database) == (
            "db",
            5433,
            "app",
            "p@ss/word",
            "appdb",
        )

    def test_no_database_configured_falls_back_to_sqlite(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        url = make_settings(monkeypatch).SQLALCHEMY_DATABASE_URI
        assert url.drivername == "sqlite+aiosqlite"
        assert url.database == str(BACKEND_DIR / "app.db")


class TestCors:
    @pytest.mark.parametrize(
        "raw",
        [
            "http://a.example,https://b.example/",
            '["http://a.example", "https://b.example/"]',
        ],
    )
    def test_origins_from_list_or_comma_string(
        self, monkeypatch: pytest.MonkeyPatch, raw: str
    ) -> None:
        monkeypatch.setenv("BACKEND_CORS_ORIGINS", raw)
        settings = make_settings(monkeypatch, FRONTEND_HOST="http://front.example/")
        assert settings.all_cors_origins == [
            "http://a.example",
            "https://b.example",
            "http://front.example",
        ]


class TestSecrets:
    @pytest.mark.parametrize(
        "name", ["SECRET_KEY", "FIRST_SUPERUSER_PASSWORD", "POSTGRES_PASSWORD"]
    )
    def test_placeholder_refused_outside_local(
        self, monkeypatch: pytest.MonkeyPatch, name: str
    ) -> None:
        with pytest.raises(ValidationError, match=f'{name} is "changethis"'):
            production(monkeypatch, **{name: "changethis"})

    def test_placeholder_allowed_locally_with_warning(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with pytest.warns(UserWarning, match="SECRET_KEY"):
            settings = make_settings(
                monkeypatch, ENVIRONMENT="local", SECRET_KEY="changethis"
            )
        assert settings.SECRET_KEY == "changethis"

    def test_secret_key_required_outside_local(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with pytest.raises(ValidationError, match="SECRET_KEY must be set"):
            production(monkeypatch, SECRET_KEY="")

    def test_short_secret_key_refused_outside_local(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with pytest.raises(ValidationError, match="at least 32"):
            production(monkeypatch, SECRET_KEY="too-short")

    def test_missing_secret_key_generated_locally(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = make_settings(monkeypatch, FIRST_SUPERUSER_PASSWORD=STRONG)
        second = make_settings(monkeypatch, FIRST_SUPERUSER_PASSWORD=STRONG)
        assert len(first.SECRET_KEY) >= 32
        assert first.SECRET_KEY != second.SECRET_KEY

    def test_strong_production_settings_accepted(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert production(monkeypatch).ENVIRONMENT == "production"


class TestSecretFiles:
    """<NAME>_FILE, as Docker, Swarm and Kubernetes mount secrets."""

    @pytest.mark.parametrize("name", SECRET_SETTINGS)
    def test_each_secret_read_from_its_file(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
    ) -> None:
        value = (
            "postgresql://app:file-secret@db/app" if name.endswith("URL") else STRONG
        )
        secret = tmp_path / "secret"
        secret.write_text(f"{value}\n")  # as `echo value > file` writes it
        monkeypatch.setenv(f"{name}_FILE", str(secret))
        monkeypatch.delenv(name, raising=False)

        settings = production(monkeypatch, **{name: None} if name in PRODUCTION else {})

        assert getattr(settings, name) == value

    def test_value_and_file_for_one_setting_refused(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        secret = tmp_path / "secret"
        secret.write_text(STRONG)
        monkeypatch.setenv("SECRET_KEY_FILE", str(secret))
        with pytest.raises(ValidationError, match="SECRET_KEY is set both directly"):
            production(monkeypatch, SECRET_KEY=STRONG)

    def test_unreadable_file_refused_with_its_path(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        missing = tmp_path / "no-such-secret"
        monkeypatch.setenv("POSTGRES_PASSWORD_FILE", str(missing))
        with pytest.raises(ValidationError, match=f"cannot read {missing}"):
            production(monkeypatch, POSTGRES_PASSWORD=None)

    def test_secret_from_a_file_meets_the_same_rules(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        secret = tmp_path / "secret"
        secret.write_text("too-short\n")
        monkeypatch.setenv("SECRET_KEY_FILE", str(secret))
        with pytest.raises(ValidationError, match="at least 32"):
            production(monkeypatch, SECRET_KEY=None)


class TestEmailSettings:
    def test_emails_enabled_needs_host_and_sender(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert not make_settings(monkeypatch, SMTP_HOST="smtp.example").emails_enabled
        assert make_settings(
            monkeypatch, SMTP_HOST="smtp.example", EMAILS_FROM_EMAIL="a@example.com"
        ).emails_enabled

    def test_sender_name_defaults_to_project_name(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        settings = make_settings(monkeypatch, PROJECT_NAME="Acme")
        assert settings.EMAILS_FROM_NAME == "Acme"


class TestDocsExposure:
    def test_docs_on_by_default_except_in_production(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert make_settings(monkeypatch).docs_enabled is True
        assert production(monkeypatch).docs_enabled is False

    def test_docs_setting_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert production(monkeypatch, DOCS_ENABLED=True).docs_enabled is True
        assert make_settings(monkeypatch, DOCS_ENABLED=False).docs_enabled is False


class TestTracingSettings:
    def test_tracing_on_only_with_an_endpoint(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        assert make_settings(monkeypatch).tracing_enabled is False
        assert make_settings(
            monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318"
        ).tracing_enabled

    def test_endpoint_must_be_a_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(ValidationError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
            make_settings(monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT="collector:4318")
