"""What the S3 test scripts share: a boto3 client for the node under test
(from the environment the Rust test sets) and its bucket notifications."""

import json
import os
import urllib.request

import boto3
from botocore.config import Config


def client(secret=None, **config):
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or os.environ["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}, **config),
    )


def notifications(bucket):
    """Every event on the bucket's notification topic, oldest first."""
    out, after = [], 0
    while True:
        req = urllib.request.Request(
            f"{os.environ['GALE_ADMIN']}/v1/topics/_bucket.{bucket}/events?after={after}&limit=1000",
            headers={"Authorization": f"Bearer {os.environ['GALE_TOKEN']}"},
        )
        page = json.load(urllib.request.urlopen(req))
        if not page:
            return out
        out += [e["event"] for e in page]
        after = page[-1]["seq"]


def error_code(fn, *args, **kwargs):
    """The S3 error code `fn` fails with (it must fail)."""
    from botocore.exceptions import ClientError

    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError(f"{fn.__name__} succeeded")
