"""What the access scripts share: issuing and revoking S3 keys through
the admin API, with the admin token (from the environment the Rust test
sets), and a boto3 client signing with an issued key."""

import json
import os
import urllib.request

import boto3
from botocore.config import Config


def _call(method, path, body=None):
    req = urllib.request.Request(
        f"{os.environ['GALE_ADMIN']}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {os.environ['GALE_TOKEN']}",
                 "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        data = r.read()
        return r.status, json.loads(data) if data else None


def create_key(buckets, read_only=False):
    """A new key for `buckets`: its answer, with `id` and `secret`."""
    status, key = _call("POST", "/v1/keys", {"buckets": buckets, "read_only": read_only})
    assert status == 201, status
    assert key["buckets"] == buckets and key["read_only"] == read_only, key
    assert len(key["id"]) == 20 and len(key["secret"]) == 40, key
    return key


def revoke_key(key_id):
    status, _ = _call("DELETE", f"/v1/keys/{key_id}")
    assert status == 204, status


def key_ids():
    return [k["id"] for k in _call("GET", "/v1/keys")[1]]


def as_key(key_id, secret, **config):
    """A boto3 client signing as `key_id` with `secret`."""
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, **config),
    )
