"""An S3-compatible server for the tests and benchmarks: moto's threaded server on a free local port.

No cloud account and no network beyond 127.0.0.1: the server keeps its objects in memory and
speaks the S3 protocol that pyarrow's S3 filesystem (and Ray Tune through it) uses.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

# Set before any S3 client exists: dummy credentials, and no lookup of an EC2 metadata service.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    def uri(self, prefix: str) -> str:
        """``s3://<bucket>/<prefix>`` with the query that points pyarrow at this server."""
        host = self.endpoint.removeprefix("http://")
        return f"s3://{self.bucket}/{prefix}?endpoint_override={host}&scheme=http&region=us-east-1"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``, listed with boto3 (not through the code under test)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3() -> Iterator[S3Server]:
    """Start the server with a fresh bucket; the AWS_* variables must already be set (``S3_ENV``)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = S3Server(f"http://127.0.0.1:{port}", f"bild-{uuid.uuid4().hex[:8]}")
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        server.stop()


def s3_environ() -> dict[str, str]:
    """This process's environment plus ``S3_ENV`` (for subprocesses and ``ray start``)."""
    return {**os.environ, **S3_ENV}
