"""A thin object-store wrapper over a boto3 S3 client (passed in: Airflow's S3Hook, the stack, or the tests)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``; ValueError for anything else (another scheme, no bucket, no key)."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {str(uri)[:200]!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ValueError(f"an s3:// URI names a bucket and a key: {uri[:200]!r}")
    return bucket, key


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

    def get_many(self, keys: list[str], *, workers: int = 8, missing_ok: bool = False) -> list[bytes | None]:
        """The objects' bytes in key order, fetched `workers` at a time (boto3 clients are thread-safe); with
        `missing_ok`, None for a key that does not exist (otherwise its error)."""
        from concurrent.futures import ThreadPoolExecutor

        get = self.get_or_none if missing_ok else self.get
        if workers <= 1 or len(keys) <= 1:
            return [get(k) for k in keys]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(get, keys))

    def get_buffer(self, key: str, chunk: int = 8 << 20) -> bytearray:
        """The object's bytes read in chunks into one preallocated buffer: no second copy of a big object."""
        resp = self.client.get_object(Bucket=self.bucket, Key=key)
        size = int(resp["ContentLength"])
        buf = bytearray(size)
        view, pos, body = memoryview(buf), 0, resp["Body"]
        while pos < size:
            piece = body.read(min(chunk, size - pos))
            if not piece:
                raise OSError(f"{self.uri(key)}: object ended after {pos} of {size} bytes")
            view[pos: pos + len(piece)] = piece
            pos += len(piece)
        return buf

    @contextmanager
    def writer(self, key: str, part_size: int = 8 << 20) -> Iterator[Callable[[bytes], None]]:
        """A `write(bytes)` callable that streams to the object: one PUT if it all fits in a part, otherwise a
        multipart upload of ``part_size`` parts (aborted if the block raises, so no half object appears)."""
        pending = bytearray()
        upload: dict = {}

        def flush() -> None:
            if not upload:
                upload["id"] = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
                upload["parts"] = []
            number = len(upload["parts"]) + 1
            etag = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload["id"], PartNumber=number,
                                           Body=bytes(pending))["ETag"]
            upload["parts"].append({"ETag": etag, "PartNumber": number})
            pending.clear()

        def write(b) -> None:
            pending.extend(b)
            if len(pending) >= part_size:
                flush()

        try:
            yield write
            if not upload:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(pending))
                return
            if pending:
                flush()
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["id"],
                                                  MultipartUpload={"Parts": upload["parts"]})
        except BaseException:
            if upload:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["id"])
            raise

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                                   "Quiet": True})

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
