"""A local S3 server for the tests: moto's server mode in its own process on 127.0.0.1, with IAM auth on, so a
wrong key is refused (403) as AWS refuses it. Imported by the test modules (no conftest here)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest

HOST = "127.0.0.1"
REGION = "us-east-1"
BUCKET = "comfy"
ROLE = "sidecar-role"
ROLE_ARN = f"arn:aws:iam::123456789012:role/{ROLE}"
# requests moto answers before it checks credentials: the three IAM calls that create the test's key
SETUP_REQUESTS = 3


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self, secret: str | None = None) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret or self.secret_key,
        )

    def credential(
        self, pattern: str = f"s3://{BUCKET}/**", *, secret: str | None = None
    ) -> dict[str, object]:
        """A per-request `credentials` entry (contract 4.4) for this server."""
        return {
            "url_pattern": pattern,
            "auth": {
                "type": "s3",
                "access_key_id": self.access_key,
                "secret_access_key": secret or self.secret_key,
                "endpoint": self.endpoint,
                "region": REGION,
            },
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait(port: int, process: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("moto_server exited")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto_server did not start")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS), "MOTO_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(port, process)
        endpoint = f"http://{HOST}:{port}"
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="x",
        )
        iam.create_user(UserName="sidecar")
        key = iam.create_access_key(UserName="sidecar")["AccessKey"]
        policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'
        iam.put_user_policy(UserName="sidecar", PolicyName="all", PolicyDocument=policy)
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        server.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        # a role for IRSA-style web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE), allowed S3
        admin = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
        )
        trust = (
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"oidc"},'
            '"Action":"sts:AssumeRoleWithWebIdentity"}]}'
        )
        admin.create_role(RoleName=ROLE, AssumeRolePolicyDocument=trust)
        s3_only = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'
        admin.put_role_policy(RoleName=ROLE, PolicyName="s3", PolicyDocument=s3_only)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
