"""Static checks of the production deployment files: docker-compose.yaml, Dockerfile, .env.example.

No Docker engine is needed: the compose file is validated against the compose spec that
check-jsonschema vendors and inspected as YAML; the Dockerfile is linted with hadolint. Both tools
come from requirements.lock and are found next to the running interpreter (.venv/bin).

The checkers are plain functions so the tests at the bottom can feed them a broken copy and
prove that they fail on it: a check that cannot fail is a defect.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "docker-compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
REQUIREMENTS_IN = REPO_ROOT / "requirements.txt"
BIN = Path(sys.executable).parent

REQUIRED_SERVICES = {
    "postgres",
    "redis",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
    "minio",
    "minio-init",
    "mlflow",
}
AIRFLOW_SERVICES = sorted(s for s in REQUIRED_SERVICES if s.startswith("airflow-"))
# Environment keys whose values are secrets.
SECRET_KEY_RE = re.compile(r"PASSWORD|PASSWD|SECRET|FERNET|TOKEN|_AUTH$|ACCESS_KEY|API_KEY|WEBHOOK", re.I)
# JSON fields of AIRFLOW_CONN_* values that hold credentials.
SECRET_CONN_FIELDS = ("login", "password")
# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?msg}, ${VAR?msg}, $VAR.
SUBST_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
BARE_SUBST_RE = re.compile(r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
ESCAPED_DOLLAR = "\x00"


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} not found: it is installed from requirements.lock (make venv)")
    return path


def _run(argv: list[object]) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


# ---- helpers over the compose model ----------------------------------------------------------


def load_compose(text: str) -> dict:
    # safe_load resolves the x-airflow-common anchors and `<<` merge keys like compose does.
    return yaml.safe_load(text)


def iter_strings(node):
    """Every string (mapping keys included) in a loaded YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from iter_strings(key)
            yield from iter_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_strings(item)


def referenced_variables(data: dict) -> set[str]:
    """Variables compose interpolates from .env / the environment (`$$` is a literal `$`)."""
    names: set[str] = set()
    for text in iter_strings(data):
        text = text.replace("$$", ESCAPED_DOLLAR)
        names.update(m.group("name") for m in SUBST_RE.finditer(text))
        names.update(m.group("name") for m in BARE_SUBST_RE.finditer(SUBST_RE.sub("", text)))
    return names


def render(value: str) -> str:
    """What compose makes of `value` with no .env: defaults filled in, required vars marked.

    A default (`:-`) is plaintext in the file, so it is rendered as itself; `${VAR:?msg}` and
    `${VAR?msg}` become `<required:VAR>`; a bare `${VAR}` silently becomes "".
    """
    value = value.replace("$$", ESCAPED_DOLLAR)

    def one(match: re.Match) -> str:
        op = match.group("op") or ""
        if "?" in op:
            return f"<required:{match.group('name')}>"
        if "-" in op:
            return match.group("arg")
        return ""

    return SUBST_RE.sub(one, value).replace(ESCAPED_DOLLAR, "$")


def is_required_secret(rendered: str) -> bool:
    return re.fullmatch(r"<required:[A-Za-z0-9_]+>", rendered) is not None


def environment_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def plaintext_secrets(data: dict) -> list[str]:
    """Every place a secret is written into the file instead of required from the environment."""
    problems: list[str] = []
    for name, service in data["services"].items():
        for key, raw in environment_of(service).items():
            value = render(raw)
            if SECRET_KEY_RE.search(key) and not is_required_secret(value):
                problems.append(f"{name}: {key}={raw!r} is not a required ${{VAR:?msg}} substitution")
            if key.startswith("AIRFLOW_CONN_") and value.lstrip().startswith("{"):
                conn = json.loads(value)
                for field in SECRET_CONN_FIELDS:
                    if field in conn and not is_required_secret(str(conn[field])):
                        problems.append(f"{name}: {key} field {field!r} is not a required substitution")
        for raw in iter_strings(service):
            value = render(raw)
            # scheme://user:password@host — the password part.
            for match in re.finditer(r"://[^/\s:@\"']*:([^@\s\"']*)@", value):
                if not is_required_secret(match.group(1)):
                    problems.append(f"{name}: URL password in {raw!r} is not a required substitution")
            # --password X / --requirepass X in one string.
            for match in re.finditer(r"--[\w-]*pass[\w-]*[ =]+(\S+)", value):
                secret = match.group(1).strip("\"'")
                if not (is_required_secret(secret) or secret.startswith("$")):
                    problems.append(f"{name}: command-line secret in {raw!r} is not a substitution")
    return problems


def env_example_names(text: str) -> set[str]:
    """Variables .env.example lists, set (`VAR=`) or documented with their default (`# VAR=`)."""
    return set(re.findall(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)=", text, flags=re.M))


def airflow_version_in_requirements(text: str) -> str:
    match = re.search(r"^apache-airflow==([0-9][^\s#;]*)", text, flags=re.M)
    assert match, "requirements.txt must pin apache-airflow==X"
    return match.group(1)


def from_images(dockerfile: str) -> list[str]:
    return re.findall(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", dockerfile, flags=re.M | re.I)


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(COMPOSE.read_text())


@pytest.fixture(scope="module")
def common_env(compose) -> dict[str, str]:
    return environment_of(compose["services"]["airflow-scheduler"])


# ---- (a) compose spec ------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec():
    result = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", COMPOSE])
    assert result.returncode == 0, result.stdout + result.stderr


# ---- (b) the shape of the stack ----------------------------------------------------------------------


def test_required_services_exist(compose):
    missing = REQUIRED_SERVICES - set(compose["services"])
    assert not missing, f"docker-compose.yaml lacks services {sorted(missing)}"


def test_airflow_services_share_the_celery_postgres_settings(compose):
    for name in AIRFLOW_SERVICES:
        env = environment_of(compose["services"][name])
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name
        conn = render(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ""))
        assert conn.startswith("postgresql+psycopg2://"), f"{name}: {conn!r}"
        assert "@postgres:" in conn, f"{name}: metadata DB must be the postgres service: {conn!r}"
        assert render(env.get("AIRFLOW__CELERY__BROKER_URL", "")).startswith("redis://"), name
        assert env.get("AIRFLOW__SCHEDULER__CREATE_CRON_DATA_INTERVALS") == "True", name


def test_airflow_components_run_their_commands(compose):
    services = compose["services"]
    expected = {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-worker": "celery worker",
        "airflow-triggerer": "triggerer",
    }
    for name, command in expected.items():
        got = services[name]["command"]
        got = " ".join(got) if isinstance(got, list) else got
        assert got == command, f"{name} runs {got!r}"
    assert any(str(p).endswith(":8080") for p in services["airflow-apiserver"]["ports"])


def test_long_running_services_have_healthchecks_and_startup_order(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "minio", "mlflow", *AIRFLOW_SERVICES):
        if name == "airflow-init":
            continue
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_connections_point_at_the_compose_services(common_env):
    aws = json.loads(render(common_env["AIRFLOW_CONN_AWS_DEFAULT"]))
    assert aws["conn_type"] == "aws"
    assert aws["extra"]["endpoint_url"] == "http://minio:9000"
    assert is_required_secret(aws["login"]) and is_required_secret(aws["password"])
    mlflow = json.loads(render(common_env["AIRFLOW_CONN_MLFLOW_DEFAULT"]))
    assert mlflow["host"] == "http://mlflow:5000"
    alerts = json.loads(render(common_env["AIRFLOW_CONN_CANDLEFLOW_ALERTS"]))
    assert alerts["conn_type"] == "http" and is_required_secret(alerts["host"])
    assert render(common_env["CANDLEFLOW_EXCHANGE_MODE"]) == "live"
    assert "CANDLEFLOW_LAKE_BUCKET" in referenced_variables({"v": common_env["CANDLEFLOW_LAKE_BUCKET"]})


def test_mlflow_and_minio_wiring(compose):
    services = compose["services"]
    mlflow = services["mlflow"]
    argv = " ".join(mlflow["command"]) if isinstance(mlflow["command"], list) else mlflow["command"]
    assert re.search(r"--artifacts-destination[ =]s3://candleflow-mlflow/", argv), argv
    env = environment_of(mlflow)
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert render(env["MLFLOW_BACKEND_STORE_URI"]).startswith("postgresql+psycopg2://")
    assert render(env["MLFLOW_BACKEND_STORE_URI"]).endswith("@postgres:5432/mlflow")
    init = json.dumps(services["minio-init"])
    assert "candleflow-mlflow" in init
    assert "LAKE_BUCKET" in init and "candleflow-lake" in render(environment_of(services["minio-init"])["LAKE_BUCKET"])


def test_no_plaintext_secrets(compose):
    problems = plaintext_secrets(compose)
    assert not problems, "\n".join(problems)


# ---- (c) Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean():
    result = _run([_tool("hadolint"), DOCKERFILE])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_the_airflow_version_of_requirements_in():
    version = airflow_version_in_requirements(REQUIREMENTS_IN.read_text())
    dockerfile = DOCKERFILE.read_text()
    images = from_images(dockerfile)
    assert images, "Dockerfile has no FROM"
    assert images[-1] == f"apache/airflow:{version}-python3.11", (
        f"FROM {images[-1]} does not match apache-airflow=={version} in requirements.txt"
    )
    # Any Airflow pin inside the Dockerfile (e.g. the one that keeps pip from moving it) agrees too.
    for pinned in re.findall(r"apache-airflow==([0-9][\w.]*)", dockerfile):
        assert pinned == version, f"Dockerfile pins apache-airflow=={pinned}, requirements.txt {version}"


def test_dockerfile_installs_the_lock_and_the_project():
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^COPY\b.*requirements\.lock", dockerfile, flags=re.M)
    assert re.search(r"pip install[^\n]*(?:\\\n[^\n]*)*-r\s+\S*requirements\.lock", dockerfile)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in dockerfile
    for folder in ("dags", "plugins", "include"):
        assert re.search(rf"^COPY\b.*\b{folder}/?\s+/opt/airflow/{folder}/?\s*$", dockerfile, flags=re.M), folder
    assert "PYTHONPATH=/opt/airflow/include:/opt/airflow/plugins" in dockerfile or "pip install --no-deps -e ." in dockerfile


def test_dockerignore_keeps_local_state_and_secrets_out():
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for needed in (".venv", ".git", ".env", "**/__pycache__", ".stack", ".pytest_cache"):
        assert needed in patterns, f".dockerignore lacks {needed}"


# ---- (d) .env.example --------------------------------------------------------------------------------


def test_env_example_lists_every_variable_compose_reads(compose):
    used = referenced_variables(compose)
    assert {"POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "CANDLEFLOW_LAKE_BUCKET"} <= used  # sanity
    missing = used - env_example_names(ENV_EXAMPLE.read_text())
    assert not missing, f".env.example lacks {sorted(missing)}"


# ---- the checks bite: each fails on a doctored copy ---------------------------------------------------


def test_schema_check_fails_on_an_invalid_compose_file(tmp_path):
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    restart: always\n", "    restart: [always]\n", 1))
    result = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", broken])
    assert result.returncode != 0, result.stdout


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text() + "\nRUN cd /tmp && pip install requests\n")
    assert _run([_tool("hadolint"), broken]).returncode != 0


@pytest.mark.parametrize(
    "old, new",
    [
        # a default on a secret is plaintext
        ("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}@postgres:5432/airflow",
         "${POSTGRES_PASSWORD:-airflow}@postgres:5432/airflow"),
        # a literal password in a URL
        ("redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@", "redis://:hunter2@"),
        # a literal secret in an env key
        ('MINIO_ROOT_PASSWORD: "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD in .env}"',
         'MINIO_ROOT_PASSWORD: "minioadmin"'),
        # a literal password inside a connection JSON
        ('"password": "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY in .env}"', '"password": "testing"'),
    ],
)
def test_secret_check_catches_plaintext(old, new):
    text = COMPOSE.read_text()
    assert old in text, f"fixture out of date: {old!r} not in docker-compose.yaml"
    assert plaintext_secrets(load_compose(text.replace(old, new, 1)))


def test_env_example_check_catches_a_new_variable(compose):
    doctored = load_compose(COMPOSE.read_text().replace("${AIRFLOW_PORT:-8080}", "${CANDLEFLOW_NEW_PORT:-8080}"))
    assert "CANDLEFLOW_NEW_PORT" in referenced_variables(doctored)
    assert "CANDLEFLOW_NEW_PORT" not in env_example_names(ENV_EXAMPLE.read_text())
    # `$$VAR` is the container's own variable, not one compose reads.
    assert "HOSTNAME" not in referenced_variables(compose)


def test_version_check_catches_drift():
    assert airflow_version_in_requirements("pandas==3.1.1\napache-airflow==3.3.1\n") == "3.3.1"
    assert airflow_version_in_requirements("apache-airflow==3.3.2  # pinned\n") == "3.3.2"
    assert from_images("FROM --platform=linux/amd64 apache/airflow:3.3.1-python3.11 AS base\n") == [
        "apache/airflow:3.3.1-python3.11"
    ]
