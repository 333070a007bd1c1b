"""A bucket's expire_after: an object goes that long after its last change,
with a LifecycleExpiration:Delete notification; one written again later
stays until its own time comes."""

import json
import os
import time
import urllib.request

from common import client, notifications

s3 = client()
req = urllib.request.Request(
    f"{os.environ['GALE_ADMIN']}/v1/buckets/scratch",
    data=json.dumps({"expire_after": "2s"}).encode(),
    headers={"Authorization": f"Bearer {os.environ['GALE_TOKEN']}", "Content-Type": "application/json"},
    method="PUT",
)
urllib.request.urlopen(req).read()

s3.put_object(Bucket="scratch", Key="old.txt", Body=b"old")
time.sleep(1.2)
s3.put_object(Bucket="scratch", Key="young.txt", Body=b"young")

deadline = time.time() + 10
while time.time() < deadline:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="scratch").get("Contents", [])]
    if keys == ["young.txt"]:
        break
    time.sleep(0.1)
assert keys == ["young.txt"], keys
while time.time() < deadline:
    if not s3.list_objects_v2(Bucket="scratch").get("Contents"):
        break
    time.sleep(0.1)
assert not s3.list_objects_v2(Bucket="scratch").get("Contents"), "young.txt never expired"

got = [(e["type"].removeprefix("com.amazonaws.s3."), e["subject"]) for e in notifications("scratch")]
assert got == [
    ("ObjectCreated:Put", "old.txt"),
    ("ObjectCreated:Put", "young.txt"),
    ("LifecycleExpiration:Delete", "old.txt"),
    ("LifecycleExpiration:Delete", "young.txt"),
], got
print("ok")
