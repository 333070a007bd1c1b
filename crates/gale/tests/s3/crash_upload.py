"""Uploads to bucket `crash` from 8 threads until the node dies, writing
each acknowledged key to the file named by argv[1]."""

import sys
import threading

from common import client

s3 = client()
s3.create_bucket(Bucket="crash")
acked = open(sys.argv[1], "a", buffering=1)
lock = threading.Lock()


def body(key):
    return key.encode() * 64


def upload(t):
    for i in range(100_000):
        key = f"t{t}/{i}"
        try:
            s3.put_object(Bucket="crash", Key=key, Body=body(key))
        except Exception:
            return
        with lock:
            acked.write(key + "\n")


threads = [threading.Thread(target=upload, args=(t,)) for t in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
