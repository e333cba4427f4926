"""Connection checks for the `<project>__healthcheck` DAG (pure: no Airflow import).

Each check returns a short human-readable success line or raises :class:`HealthCheckError` with a message that
names the service and what is wrong. Messages never contain credentials.
"""

from __future__ import annotations

from typing import Any

import requests


class HealthCheckError(RuntimeError):
    """A service the project needs is unreachable or refuses our credentials."""


def _get(url: str, what: str, timeout: float, **kwargs: Any) -> requests.Response:
    try:
        return requests.get(url, timeout=timeout, allow_redirects=False, **kwargs)
    except requests.RequestException as exc:
        # str(exc) of a connection error holds the URL, never the headers that carry the credentials.
        raise HealthCheckError(f"{what} at {url} is unreachable: {type(exc).__name__}: {exc}") from None


def check_s3(client: Any, bucket: str, prefixes: list[str]) -> str:
    """The bucket exists and we may list every prefix the project reads or writes."""
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", "?")
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise HealthCheckError(f"S3 bucket {bucket!r} at {endpoint} is not usable: {code}") from None
    except BotoCoreError as exc:
        raise HealthCheckError(f"S3 at {endpoint} is unreachable: {exc}") from None
    counts = []
    for prefix in prefixes:
        try:
            resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1000)
        except (ClientError, BotoCoreError) as exc:
            raise HealthCheckError(f"S3 cannot list s3://{bucket}/{prefix} at {endpoint}: {exc}") from None
        n = resp.get("KeyCount", 0)
        counts.append(f"s3://{bucket}/{prefix} ({n}{'+' if resp.get('IsTruncated') else ''} objects)")
    return f"S3 at {endpoint}: bucket {bucket!r} reachable; " + ", ".join(counts)


def check_label_studio(base_url: str, token: str, timeout: float = 10.0) -> str:
    """Label Studio answers /health and accepts the API token."""
    base_url = base_url.rstrip("/")
    if not token:
        raise HealthCheckError(f"Label Studio at {base_url}: the connection has no API token (its password field)")
    resp = _get(f"{base_url}/health", "Label Studio", timeout)
    if resp.status_code != 200:
        raise HealthCheckError(f"Label Studio at {base_url}/health answered HTTP {resp.status_code}")
    resp = _get(f"{base_url}/api/current-user/whoami", "Label Studio", timeout,
                headers={"Authorization": f"Token {token}"})
    if resp.status_code in (401, 403):
        raise HealthCheckError(
            f"Label Studio at {base_url} rejected the API token (HTTP {resp.status_code}); check that the token "
            "is current and that legacy tokens are enabled (LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true)"
        )
    if resp.status_code != 200:
        raise HealthCheckError(f"Label Studio at {base_url}/api/current-user/whoami answered HTTP {resp.status_code}")
    try:
        who = resp.json()
    except ValueError:
        raise HealthCheckError(f"Label Studio at {base_url} answered whoami with something that is not JSON") from None
    return f"Label Studio at {base_url}: up, token accepted for user {who.get('email') or who.get('username')!r}"


def check_scale(api_url: str, api_key: str, timeout: float = 10.0) -> str:
    """The Scale v1 API answers and accepts the key (HTTP Basic, key as user name)."""
    api_url = api_url.rstrip("/")
    if not api_key:
        raise HealthCheckError(f"Scale at {api_url}: the connection has no API key (its password field)")
    resp = _get(f"{api_url}/projects", "Scale", timeout, auth=(api_key, ""))
    if resp.status_code in (401, 403):
        raise HealthCheckError(f"Scale at {api_url} rejected the API key (HTTP {resp.status_code})")
    if resp.status_code != 200:
        raise HealthCheckError(f"Scale at {api_url}/projects answered HTTP {resp.status_code}")
    return f"Scale at {api_url}: up, key accepted ({len(resp.json())} projects visible)"
