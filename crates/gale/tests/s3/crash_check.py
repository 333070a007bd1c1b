"""After a kill -9 and a restart: every acknowledged upload (argv[1]) is
there with its bytes, and the bucket's topic holds exactly one
ObjectCreated:Put per object that exists, and none for one that does not."""

import collections
import sys

from common import client, notifications

s3 = client()
acked = [k for k in open(sys.argv[1]).read().split("\n") if k]
stored = set()
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="crash"):
    stored |= {o["Key"] for o in page.get("Contents", [])}
missing = [k for k in acked if k not in stored]
assert not missing, f"{len(missing)} acknowledged uploads lost, e.g. {missing[:3]}"
for key in acked[:: max(1, len(acked) // 50)]:
    assert s3.get_object(Bucket="crash", Key=key)["Body"].read() == key.encode() * 64, key
events = collections.Counter(
    e["subject"] for e in notifications("crash") if e["type"] == "com.amazonaws.s3.ObjectCreated:Put"
)
twice = [k for k, n in events.items() if n > 1]
assert not twice, f"{len(twice)} uploads notified twice, e.g. {twice[:3]}"
ghosts = [k for k in events if k not in stored]
assert not ghosts, f"{len(ghosts)} notifications of objects that do not exist, e.g. {ghosts[:3]}"
silent = [k for k in stored if k not in events]
assert not silent, f"{len(silent)} stored objects without their notification, e.g. {silent[:3]}"
print(f"acknowledged {len(acked)}, stored {len(stored)}, notified {len(events)}")
