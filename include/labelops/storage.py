"""A thin object-store wrapper over a boto3 S3 client (passed in: Airflow's S3Hook, the stack, or the tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class S3Store:
    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_or_none(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.get(key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def get_json(self, key: str) -> Any:
        body = self.get_or_none(key)
        return None if body is None else json.loads(body)

    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        return self.uri(key)

    def put_json(self, key: str, value: Any) -> str:
        return self.put(key, json.dumps(value, indent=1, ensure_ascii=False, default=str).encode(), "application/json")

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> Iterator[dict]:
        """Every object under prefix: {"key", "etag", "size"}, in key order."""
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self.client.list_objects_v2(**kwargs)
            for obj in page.get("Contents", []):
                yield {"key": obj["Key"], "etag": obj["ETag"].strip('"'), "size": obj["Size"]}
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]
