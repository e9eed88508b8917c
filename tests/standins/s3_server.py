"""A local S3 endpoint on 127.0.0.1: moto's server in its own process, with authentication on.

The real clients (pyarrow's S3FileSystem, as the registry, the candle sources and Ray Train use it)
talk S3's wire protocol to it. Authentication is real too: moto checks every request's SigV4
signature against an IAM access key created here, so a process that lacks the credentials in its
environment gets 403, the way it would against AWS. Credentials travel only as the standard
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables (`env()`), never inside a URI: `uri()`
carries the endpoint alone, so it can be logged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import requests

from cluster.local_ray import free_port

BUCKET = "hybrid-trader"
REGION = "us-east-1"
# moto lets this many requests through unauthenticated, then checks every signature: exactly the
# three IAM calls below that create the user, its policy and its key.
BOOTSTRAP_ACTIONS = 3
S3_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


class S3StandInError(RuntimeError):
    """moto's server did not start; the message carries the tail of its log."""


@dataclass
class S3StandIn:
    """One moto server, one IAM user allowed s3:*, one bucket."""

    log_path: Path
    bucket: str = BUCKET
    port: int = 0
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> S3StandIn:
        self.port = free_port()
        moto = Path(sys.executable).with_name("moto_server")
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_ACTIONS)}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait(timeout_s)
            self._create_credentials()
            self.filesystem(allow_bucket_creation=True).create_dir(self.bucket)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> S3StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """What a process needs to reach the bucket: the credentials, and no EC2 metadata probe."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def uri(self, prefix: str) -> str:
        """`s3://bucket/prefix` with this endpoint as pyarrow's query options; no secret in it."""
        query = urlencode({"endpoint_override": self.endpoint, "scheme": "http"}, safe=":")
        return f"s3://{self.bucket}/{prefix.strip('/')}?{query}"

    def filesystem(self, *, allow_bucket_creation: bool = False):
        """pyarrow's S3FileSystem on this endpoint, signing with the stand-in's key."""
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint,
            scheme="http",
            region=REGION,
            allow_bucket_creation=allow_bucket_creation,
        )

    def _wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                requests.get(f"http://{self.endpoint}/moto-api/", timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.3)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise S3StandInError(f"moto_server did not answer on {self.endpoint}:\n{tail}")

    def _create_credentials(self) -> None:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=f"http://{self.endpoint}",
            region_name=REGION,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="hybrid-trader")
        iam.put_user_policy(
            UserName="hybrid-trader", PolicyName="s3", PolicyDocument=json.dumps(S3_POLICY)
        )
        key = iam.create_access_key(UserName="hybrid-trader")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
