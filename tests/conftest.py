"""Test setup: an isolated AIRFLOW_HOME for in-process Airflow imports, and the local stack of real servers.

The `stack` fixture starts S3 (moto server), Label Studio, the SMTP catcher, the fake Scale API and
`airflow standalone` once per session on 127.0.0.1 (ports from LABELOPS_TEST_PORT_BASE, default 18780, so a
running demo stack on 8780 is left alone), with state in a temporary folder, and stops them at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Before anything imports Airflow: a throwaway home, no examples, this repo's DAGs and plugins.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="labelops-test-airflow-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ.pop("LABELOPS_PROJECTS_DIR", None)
sys.path.insert(0, str(REPO / "tools"))

import pytest  # noqa: E402

# A second project for the stack's Airflow: its Label Studio connection carries a wrong token (the healthcheck
# must fail naming it) and it also uses Scale (served by the fake), so every check runs for real.
WRONG_TOKEN_PROJECT = """
name: wrong_token
description: A project whose Label Studio token is wrong, for the healthcheck tests.
owner: tests
task: intent_classification
storage: {bucket: labelops, source_prefix: wrong_token/raw/, project_prefix: wrong_token/}
taxonomy: {file: taxonomies/banking77.json}
ingest: {contract: banking_support_utterances.odcs.yaml}
label_studio: {connection_id: label_studio_wrong_token, label_config: label_configs/banking77_intent.xml}
scale: {connection_id: scale_default, project: wrong_token}
alerts: {emails: [leads@example.com]}
schedules: {ingest: null, agreement: null}
"""


@pytest.fixture(scope="session")
def test_projects_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("projects")
    for f in (REPO / "include" / "configs" / "projects").glob("*.yaml"):
        shutil.copy(f, d / f.name)
    (d / "wrong_token.yaml").write_text(WRONG_TOKEN_PROJECT)
    return d


@pytest.fixture(scope="session")
def label_studio_endpoint(request) -> tuple[str, str]:
    """(base URL, API token) of the session's Label Studio. For quick local iteration on the Label Studio tests
    only, LABELOPS_TEST_LS_STATE=<state dir> and LABELOPS_TEST_LS_PORT_BASE=<base> point it at a stack that is
    already running instead (CI and `make test` never set them)."""
    from stack import Stack

    state = os.environ.get("LABELOPS_TEST_LS_STATE")
    st = (Stack(state=Path(state), port_base=int(os.environ["LABELOPS_TEST_LS_PORT_BASE"])) if state
          else request.getfixturevalue("stack"))
    return st.url("label_studio"), st.secrets()["label_studio_token"]


@pytest.fixture(scope="session")
def label_studio(label_studio_endpoint):
    """A label_studio_sdk client on the session's Label Studio."""
    from label_studio_sdk.client import LabelStudio

    url, token = label_studio_endpoint
    return LabelStudio(base_url=url, api_key=token)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, test_projects_dir):
    from stack import Stack

    state = tmp_path_factory.mktemp("stack")
    base = int(os.environ.get("LABELOPS_TEST_PORT_BASE", "18780"))
    wrong = ('{"conn_type": "http", "host": "127.0.0.1", "port": %d, "password": "not-the-token"}' % (base + 1))
    st = Stack(state=state, port_base=base, extra_airflow_env={
        "LABELOPS_PROJECTS_DIR": str(test_projects_dir),
        "AIRFLOW_CONN_LABEL_STUDIO_WRONG_TOKEN": wrong,
    })
    try:
        st.up()
        yield st
    finally:
        st.down()


def pytest_collection_modifyitems(config, items):
    """Tests marked `stack_teardown` stop the session's stack: run them after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("stack_teardown") is not None)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (real HTTP, no mock) with the bucket `labelops`; a boto3 client to it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket="labelops")
    yield client
    server.stop()


@pytest.fixture(scope="session")
def airflow_db():
    """`dag.test()` needs a metadata database: migrate the session's throwaway SQLite one."""
    airflow = Path(sys.executable).parent / "airflow"
    out = subprocess.run([str(airflow), "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.fixture
def aws_connection(s3, monkeypatch):
    endpoint = s3.meta.endpoint_url
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "test", "password": "test",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}))
    return endpoint


def write_dagtest_project(tmp_path, monkeypatch, **overrides):
    """A project config file of its own (dag.test() re-parses the DAG folder, which must build this DAG): the
    banking demo project under a unique name, with `overrides` of top-level fields."""
    import yaml

    from demo import project_like
    from labelops.config import load_project

    name = f"dagtest_{uuid.uuid4().hex[:8]}"  # unique: Label Studio and the Airflow DB outlive one test
    raw = project_like("banking_support", name)
    raw["dispatch"] = {"batch_size": 20, "gold_share": 0.0}
    raw.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("LABELOPS_PROJECTS_DIR", str(tmp_path))
    return load_project(path)


@pytest.fixture
def dagtest_project(tmp_path, monkeypatch):
    return write_dagtest_project(tmp_path, monkeypatch)


@contextlib.contextmanager
def mailcatcher(folder: Path):
    """The stack's SMTP catcher (tools/mailcatcher.py) on a free port of 127.0.0.1, keeping what it receives in
    `folder`; yields (host, port) once it answers."""
    import smtplib

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "mailcatcher.py"), "--host", "127.0.0.1",
                             "--port", str(port), "--dir", str(folder)])
    try:
        for _ in range(100):
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=2) as s:
                    s.noop()
                break
            except OSError:
                time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)


def smtp_connection(host: str, port: int, **extra) -> str:
    """An Airflow SMTP connection (AIRFLOW_CONN_<ID> JSON) to a plain local server; no retries of its own."""
    return json.dumps({"conn_type": "smtp", "host": host, "port": port,
                       "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "labelops@localhost",
                                 "timeout": 10, "retry_limit": 0, **extra}})


def print_table(title: str, columns: dict[str, str], out: dict[str, dict]) -> None:
    """The table a reliability suite prints (`pytest -s`, `make chaos`): one markdown row per case, the case
    name, then `columns` (result key -> column title)."""
    rows = ["| " + " | ".join([title, *columns.values()]) + " |", "|---" * (len(columns) + 1) + "|"]
    rows += ["| " + " | ".join([name, *(str(r[k]) for k in columns)]) + " |" for name, r in out.items()]
    print("\n" + "\n".join(rows))
