"""labelops.health against real servers: what a data engineer reads when a connection is broken."""

from __future__ import annotations

import pytest

from conftest import free_port
from labelops.health import HealthCheckError, check_label_studio, check_s3, check_scale

pytestmark = pytest.mark.stack


def test_s3_ok_and_missing_bucket(stack):
    client = stack.s3_client()
    client.put_object(Bucket="labelops", Key="health/raw/a.txt", Body=b"x")
    assert "s3://labelops/health/raw/ (1 objects)" in check_s3(client, "labelops", ["health/raw/"])
    with pytest.raises(HealthCheckError, match=r"S3 bucket 'no-such-bucket' .* not usable: 404"):
        check_s3(client, "no-such-bucket", [])


def test_label_studio_ok_bad_token_and_down(stack):
    token = stack.secrets()["label_studio_token"]
    assert "token accepted" in check_label_studio(stack.url("label_studio"), token)
    with pytest.raises(HealthCheckError, match="rejected the API token") as err:
        check_label_studio(stack.url("label_studio"), "f" * 40)
    assert "f" * 40 not in str(err.value)
    with pytest.raises(HealthCheckError, match="has no API token"):
        check_label_studio(stack.url("label_studio"), "")
    with pytest.raises(HealthCheckError, match="unreachable"):
        check_label_studio(f"http://127.0.0.1:{free_port()}", token)


def test_scale_ok_and_bad_key(stack):
    key = stack.secrets()["scale_api_key"]
    assert "key accepted" in check_scale(stack.url("scale") + "/v1", key)
    with pytest.raises(HealthCheckError, match=r"rejected the API key \(HTTP 401\)") as err:
        check_scale(stack.url("scale") + "/v1", "live_wrong_key")
    assert "live_wrong_key" not in str(err.value)
