"""docker-compose.yml and the Dockerfile, checked by structure (this machine has no Docker
engine): two martech nodes on PostgreSQL with Mailpit, health checks, restart policies, a
volume for var/, pinned images, a non-root user. And `martech health`, the containers' health
check, never migrates."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from martech.cli import main
from scheduler.settings import Settings
from scheduler.store.db import make_engine
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the << merge keys
    return data


def martech_nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_two_martech_nodes_postgres_and_mailpit(compose: dict[str, Any]) -> None:
    nodes = martech_nodes(compose)
    assert len(nodes) == 2
    images = {svc["image"].split(":")[0] for svc in compose["services"].values()}
    assert {"postgres", "axllent/mailpit", "martech"} == images
    names = [svc["environment"]["MARTECH_NODE_NAME"] for svc in nodes.values()]
    assert len(set(names)) == 2, "each node needs a name of its own (its heartbeat, its leases)"
    host_ports = [p.split(":")[0] for svc in nodes.values() for p in svc["ports"]]
    assert len(set(host_ports)) == len(host_ports) == 2
    for svc in nodes.values():
        assert svc["environment"]["MARTECH_SMTP_HOST"] == "mailpit"
        assert set(svc["secrets"]) >= {"martech_database_url", "martech_secret_key"}


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image, _, tag = svc["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: pin the image ({svc['image']})"
        assert re.search(r"\d+\.\d+", tag), f"{name}: a release tag, not a moving one ({tag})"
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert base is not None
    tag = base.group(1).rpartition(":")[2]
    assert re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+", tag), f"pin the base image ({tag})"


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        assert svc["healthcheck"]["test"], f"{name} has no health check"
        assert svc["restart"] in RESTART_POLICIES, f"{name}: restart policy"
    for svc in martech_nodes(compose).values():
        assert svc["healthcheck"]["test"] == ["CMD", "martech", "health"]
        depends = svc["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["mailpit"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_var_is_a_named_volume(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, svc in martech_nodes(compose).items():
        mounts = dict(v.split(":")[:2][::-1] for v in svc["volumes"])  # target -> source
        assert mounts.get("/app/var") in declared, f"{name}: var/ must be a named volume"
        assert mounts["/app/config"] == "./config"


def test_environment_names_real_settings(compose: dict[str, Any]) -> None:
    fields = {f"MARTECH_{name.upper()}" for name in Settings.model_fields} | {
        "MARTECH_SECRETS_DIR"}
    for name, svc in martech_nodes(compose).items():
        unknown = set(svc["environment"]) - fields
        assert not unknown, f"{name}: not a setting: {sorted(unknown)}"
    for secret in ("martech_secret_key", "martech_database_url"):
        assert secret.removeprefix("martech_") in Settings.model_fields


def test_the_image_runs_as_a_user_of_its_own() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^COPY martech ", text, re.MULTILINE), "the entry point's package"
    assert 'HEALTHCHECK' in text and '"martech", "health"' in text
    assert "var" in (REPO / ".dockerignore").read_text().split()  # secrets stay out


def test_readme_says_docker_compose_up() -> None:
    assert "docker compose up" in (REPO / "README.md").read_text()


@pytest.fixture
def _keep_root_logger() -> Iterator[None]:
    root = logging.getLogger()  # the CLI installs its own handler
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_keep_root_logger")
def test_health_never_migrates(empty_db_url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["health"], env={
        "MARTECH_DATABASE_URL": empty_db_url, "MARTECH_NODE_NAME": "probe",
        "MARTECH_CONFIG_DIR": str(tmp_path / "none"), "MARTECH_VAR_DIR": str(tmp_path)})
    assert result.exit_code == 1, result.output
    engine = make_engine(empty_db_url)
    try:
        assert sa.inspect(engine).get_table_names() == []  # not even alembic_version
    finally:
        engine.dispose()
