"""A wasm function reads an upload and writes a result through gale:buckets
(`wasm_buckets.rs` deploys it): upload with boto3, wait for the result,
check its bytes and that it was notified once, as a put through S3 is."""

import time

from common import client, notifications

s3 = client()
s3.put_object(Bucket="uploads", Key="docs/hello world.txt", Body=b"hello, gale", ContentType="text/plain")

deadline = time.time() + 20
while True:
    try:
        got = s3.get_object(Bucket="results", Key="docs/hello world.txt")
        break
    except s3.exceptions.NoSuchKey:
        assert time.time() < deadline, "the function wrote no result"
        time.sleep(0.05)

assert got["Body"].read() == b"HELLO, GALE"
assert got["ContentType"] == "text/plain", got["ContentType"]

events = notifications("results")
mine = [e for e in events if e["subject"] == "docs/hello world.txt"]
assert len(mine) == 1, events
record = mine[0]["data"]
assert mine[0]["type"] == "com.amazonaws.s3.ObjectCreated:Put", mine[0]
assert record["eventName"] == "ObjectCreated:Put", record
assert record["s3"]["object"]["key"] == "docs/hello+world.txt", record
assert record["s3"]["object"]["size"] == len(b"HELLO, GALE"), record
assert record["s3"]["object"]["eTag"] == got["ETag"].strip('"'), (record, got["ETag"])
assert record["userIdentity"]["principalId"] == "shout", record

# Into a bucket the manifest does not grant: the function fails, nothing lands.
s3.put_object(Bucket="uploads", Key="deny/x.txt", Body=b"no")
