"""compose.yaml, read as data: the services and their order, healthchecks, the roles, and no inline secret.

.ci/compose-test.sh brings the file up for real (with a stand-in for the postgres image); this test keeps
its shape honest without containers.
"""

from __future__ import annotations

import os
import re
import stat
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from tokenpool.entrypoints.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / "compose" / "env.example"
TOKENPOOL_SERVICES = ("tome", "migrate", "api", "worker")
# A reference to the environment that refuses to start without a value: ${NAME:?message} (or ${NAME?...}).
REQUIRED_REF = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+):?\?[^}]*\}$")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|PRIVATE|CREDENTIAL|TOKEN|_KEY$|^KEY$")  # after "TOKENPOOL_"


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the x-* anchors and << merges
    return loaded


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def environment(service: str) -> dict[str, str]:
    env = services()[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment as a mapping"
    return {str(k): str(v) for k, v in env.items()}


def test_the_services_and_their_images():
    assert set(services()) == {"postgres", "tome", "migrate", "api", "worker"}
    assert services()["postgres"]["image"].endswith("postgres:16")
    images = {services()[name]["image"] for name in TOKENPOOL_SERVICES}
    assert len(images) == 1, "one tokenpool image for every tokenpool service"
    for name in TOKENPOOL_SERVICES:
        service = services()[name]
        assert service["build"]["context"] == "."
        assert service["build"]["args"]["BASE_IMAGE"].startswith("${BASE_IMAGE:-")
        assert service["init"] is True, f"{name}: Python as PID 1 ignores SIGTERM"
    assert "command" not in services()["api"], "the API is the image's default command"


def _cli_command_exists(words: list[str]) -> bool:
    node: Any = typer.main.get_command(cli_app)
    for word in words:
        if word.startswith("-"):
            break
        if not hasattr(node, "commands"):
            return False
        if word not in node.commands:
            return False
        node = node.commands[word]
    return not hasattr(node, "commands")


@pytest.mark.parametrize("service", ["tome", "migrate", "worker"])
def test_every_command_is_a_tokenpool_command(service):
    command = services()[service]["command"]
    assert command[0] == "tokenpool"
    assert _cli_command_exists(command[1:]), command


def test_the_start_order_waits_for_health_and_for_the_migrations():
    def conditions(service: str) -> dict[str, str]:
        return {name: dep["condition"] for name, dep in services()[service]["depends_on"].items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    for service in ("api", "worker"):
        assert conditions(service) == {"migrate": "service_completed_successfully", "tome": "service_healthy"}
    assert services()["migrate"]["restart"] == "no"
    assert services()["migrate"]["command"] == ["tokenpool", "db", "upgrade"]


def test_every_long_running_service_has_a_healthcheck_on_what_it_serves():
    expected = {"postgres": "pg_isready", "tome": "/_admin/health", "api": ":8000/readyz", "worker": ":9108/metrics"}
    for service, probe in expected.items():
        check = services()[service]["healthcheck"]
        assert check["test"][0] == "CMD"
        assert any(probe in part for part in check["test"]), (service, check["test"])
        assert {"interval", "timeout", "retries"} <= set(check)
        # podman 4.3's Docker-compatible API splits arguments on spaces: none may contain one.
        assert not [part for part in check["test"] if " " in part], check["test"]
    assert "127.0.0.1" in services()["postgres"]["healthcheck"]["test"], "TCP: not ready during the init scripts"


def _values(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [item for key, value in node.items() for item in _values(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [item for i, value in enumerate(node) for item in _values(value, f"{path}[{i}]")]
    return [(path, str(node))]


def test_no_secret_is_written_in_the_file():
    for path, value in _values(compose()):
        name = path.rsplit(".", 1)[-1]
        if SECRET_NAME.search(name.removeprefix("TOKENPOOL_")):
            assert REQUIRED_REF.match(value), f"{path} = {value!r}: a secret must be ${{NAME:?...}}"
        for url in re.findall(r"\w+://[^\s\"']+", value):
            userinfo = url.split("://", 1)[1].split("@", 1)
            if len(userinfo) == 2 and ":" in userinfo[0]:
                password = userinfo[0].split(":", 1)[1]
                assert REQUIRED_REF.match(password), f"{path}: the password in {url!r} is not a reference"
    assert "POSTGRES_HOST_AUTH_METHOD" not in environment("postgres"), "no trust authentication"


def test_every_required_variable_is_in_the_example_env_file_with_a_placeholder():
    lines = [line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")]
    required = set(re.findall(r"\$\{([A-Z0-9_]+):?\?", "\n".join(lines)))
    assert required == {"POSTGRES_PASSWORD", "TOKENPOOL_OWNER_DB_PASSWORD", "TOKENPOOL_APP_DB_PASSWORD"}
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    assert set(example) == required
    assert all(value.startswith("change-me") for value in example.values())


def test_the_roles_the_init_script_creates_are_the_ones_the_services_use():
    mounts = services()["postgres"]["volumes"]
    initdb = next(m for m in mounts if m.split(":")[1] == "/docker-entrypoint-initdb.d")
    folder = ROOT / initdb.split(":")[0]
    scripts = sorted(folder.iterdir())
    assert [s.name for s in scripts] == ["10-tokenpool-roles.sh"]
    script = scripts[0].read_text()
    assert os.stat(scripts[0]).st_mode & stat.S_IXUSR, "the official image runs an executable .sh, sources others"
    assert "CREATE ROLE tokenpool_owner LOGIN PASSWORD :'owner_password'" in script
    assert "CREATE ROLE tokenpool_app LOGIN PASSWORD :'app_password'" in script
    assert "CREATE DATABASE tokenpool OWNER tokenpool_owner" in script
    assert not re.search(r"SUPERUSER|CREATEDB|CREATEROLE|BYPASSRLS", script)

    migrate = environment("migrate")
    assert migrate["TOKENPOOL_DATABASE_ADMIN_URL"].startswith("postgresql://tokenpool_owner:")
    assert migrate["TOKENPOOL_DATABASE_APP_ROLE"] == "tokenpool_app"
    for service in ("migrate", "api", "worker"):
        assert environment(service)["TOKENPOOL_DATABASE_URL"].startswith("postgresql://tokenpool_app:")
        assert environment(service)["TOKENPOOL_DATABASE_URL"].endswith("@postgres:5432/tokenpool")
    for service in ("api", "worker"):
        assert "TOKENPOOL_DATABASE_ADMIN_URL" not in environment(service), "the services never get the owner"


def test_the_vault_key_file_is_shared_by_the_services_that_seal_and_the_api_is_on_loopback():
    for service in ("migrate", "api", "worker"):
        assert "tokenpool-home:/var/lib/tokenpool" in services()[service]["volumes"]
    assert "tokenpool-home:/var/lib/tokenpool" not in services()["tome"]["volumes"]
    assert services()["api"]["ports"] == ["127.0.0.1:${TOKENPOOL_API_PORT:-8000}:8000"]
    assert set(compose()["volumes"]) == {"postgres-data", "tokenpool-home", "tome-data"}
