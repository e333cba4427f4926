"""A small benchmark harness: each benchmark runs a baseline and ours side by side, alternating, in one run of
`make bench`, and prints one markdown row with both medians and their ratio (ours / baseline: below 1 is faster).

A benchmark module under bench/ defines `BENCHMARKS`, a list of Benchmark objects. Measurements are taken by
the functions themselves (they return seconds), so a benchmark can time a subprocess, a server round trip or a
pure function alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable


@dataclass
class Benchmark:
    name: str
    baseline_label: str
    baseline: Callable[[], float]
    ours: Callable[[], float]
    repeat: int = 5
    unit: str = "ms"
    scale: float = 1000.0  # seconds -> unit


@dataclass
class Result:
    bench: Benchmark
    baseline: list[float]
    ours: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.baseline)

    def row(self) -> str:
        b, o = statistics.median(self.baseline), statistics.median(self.ours)
        s, u = self.bench.scale, self.bench.unit
        return (f"| {self.bench.name} | {self.bench.baseline_label}: {b * s:.1f} {u} | {o * s:.1f} {u} | "
                f"{self.ratio:.2f}x | {self.bench.repeat} |")


HEADER = "| benchmark | baseline (median) | ours (median) | ours/baseline | runs |\n|---|---|---|---|---|"


def run(bench: Benchmark) -> Result:
    baseline, ours = [], []
    for _ in range(bench.repeat):  # alternate, so drift on a busy machine hits both sides alike
        baseline.append(bench.baseline())
        ours.append(bench.ours())
    return Result(bench, baseline, ours)


def s3_client(endpoint: str):
    """A boto3 S3 client on a benchmark's moto server (its fixed test keys)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench")


def start_moto():
    """A moto S3 server (real HTTP) on a free loopback port with the bucket ``labelops``, stopped at exit:
    (endpoint URL, the server's Popen)."""
    import atexit
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(server.terminate)  # the server ends with the benchmark, even when a side fails
    endpoint = f"http://127.0.0.1:{port}"
    client = s3_client(endpoint)
    for _ in range(100):
        try:
            client.list_buckets()
            break
        except Exception:
            time.sleep(0.2)
    client.create_bucket(Bucket="labelops")
    return endpoint, server
