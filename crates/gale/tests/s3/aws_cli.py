"""The AWS CLI against a Gale node: cp (small and multipart), ls, rm,
with the CLI's default checksum settings, and an aws-chunked body with a
trailing checksum forced through boto3."""

import hashlib
import os
import subprocess
import tempfile

from common import client, notifications


def aws(*args):
    out = subprocess.run(["aws", "--endpoint-url", os.environ["AWS_ENDPOINT_URL"], *args],
                         capture_output=True, text=True)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


s3 = client()
s3.create_bucket(Bucket="uploads")
work = tempfile.mkdtemp()
small = os.path.join(work, "small file.txt")
with open(small, "wb") as f:
    f.write(b"a small file\n")
big = os.path.join(work, "big.bin")
data = os.urandom(20 * 1024 * 1024)
with open(big, "wb") as f:
    f.write(data)

aws("s3", "cp", small, "s3://uploads/in/small file.txt")
aws("s3", "cp", big, "s3://uploads/in/big.bin")
listing = aws("s3", "ls", "s3://uploads/in/")
assert "small file.txt" in listing and "big.bin" in listing, listing
assert "in/" in aws("s3", "ls", "s3://uploads/")
assert "uploads" in aws("s3", "ls")
back = os.path.join(work, "back.bin")
aws("s3", "cp", "s3://uploads/in/big.bin", back)
with open(back, "rb") as f:
    assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
etag = s3.head_object(Bucket="uploads", Key="in/big.bin")["ETag"]
assert etag.endswith('-3"'), etag  # the CLI's 8 MiB parts

aws("s3", "rm", "s3://uploads/in/small file.txt")
assert "small file.txt" not in aws("s3", "ls", "s3://uploads/in/")

names = [(e["type"].removeprefix("com.amazonaws.s3."), e["subject"]) for e in notifications("uploads")]
assert names == [
    ("ObjectCreated:Put", "in/small file.txt"),
    ("ObjectCreated:CompleteMultipartUpload", "in/big.bin"),
    ("ObjectRemoved:Delete", "in/small file.txt"),
], names
rec = notifications("uploads")[0]["data"]["s3"]["object"]
assert rec["key"] == "in/small+file.txt", rec
print("ok")
