"""boto3 against a Gale node: what a user of S3 checks, and that every
acknowledged change has exactly one notification and a refused one none."""

import hashlib
import io
import os
import zlib
import base64
import datetime

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from common import client, error_code, notifications

s3 = client()
B = "photos"

# Buckets.
s3.create_bucket(Bucket=B)
assert B in [b["Name"] for b in s3.list_buckets()["Buckets"]]
s3.head_bucket(Bucket=B)
assert error_code(s3.head_bucket, Bucket="nope-nope") in ("404", "NoSuchBucket")
assert error_code(s3.create_bucket, Bucket=B) == "BucketAlreadyOwnedByYou"
assert error_code(s3.get_object, Bucket="nope-nope", Key="k") == "NoSuchBucket"

# Put and get: bytes, entity tag, metadata, content type.
body = b"hello, gale\n" * 100
put = s3.put_object(Bucket=B, Key="a/hello.txt", Body=body, ContentType="text/plain",
                    Metadata={"owner": "ada", "kind": "greeting"})
md5 = hashlib.md5(body).hexdigest()
assert put["ETag"] == f'"{md5}"', put["ETag"]
got = s3.get_object(Bucket=B, Key="a/hello.txt")
assert got["Body"].read() == body
assert got["ContentType"] == "text/plain"
assert got["Metadata"] == {"owner": "ada", "kind": "greeting"}, got["Metadata"]
assert got["ETag"] == f'"{md5}"'
assert got["ContentLength"] == len(body)
head = s3.head_object(Bucket=B, Key="a/hello.txt")
assert head["ContentLength"] == len(body) and head["Metadata"]["owner"] == "ada"
assert error_code(s3.get_object, Bucket=B, Key="missing") == "NoSuchKey"
assert error_code(s3.head_object, Bucket=B, Key="missing") in ("404", "NoSuchKey")

# Ranges.
r = s3.get_object(Bucket=B, Key="a/hello.txt", Range="bytes=7-10")
assert r["Body"].read() == body[7:11] and r["ContentRange"] == f"bytes 7-10/{len(body)}"
assert s3.get_object(Bucket=B, Key="a/hello.txt", Range="bytes=-5")["Body"].read() == body[-5:]
assert s3.get_object(Bucket=B, Key="a/hello.txt", Range="bytes=1195-")["Body"].read() == body[1195:]
assert error_code(s3.get_object, Bucket=B, Key="a/hello.txt", Range="bytes=5000-") == "InvalidRange"

# Conditional reads: 304 and 412.
assert error_code(s3.get_object, Bucket=B, Key="a/hello.txt", IfNoneMatch=f'"{md5}"') == "304"
assert error_code(s3.get_object, Bucket=B, Key="a/hello.txt", IfMatch='"0000"') == "PreconditionFailed"
s3.get_object(Bucket=B, Key="a/hello.txt", IfMatch=f'"{md5}"')
later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
earlier = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
assert error_code(s3.get_object, Bucket=B, Key="a/hello.txt", IfModifiedSince=later) == "304"
s3.get_object(Bucket=B, Key="a/hello.txt", IfModifiedSince=earlier)
assert error_code(s3.get_object, Bucket=B, Key="a/hello.txt", IfUnmodifiedSince=earlier) == "PreconditionFailed"

# Conditional write: If-None-Match: * refuses an existing key, and notifies nothing.
assert error_code(s3.put_object, Bucket=B, Key="a/hello.txt", Body=b"x", IfNoneMatch="*") == "PreconditionFailed"
s3.put_object(Bucket=B, Key="a/new.txt", Body=b"new", IfNoneMatch="*")

# A wrong checksum or Content-MD5 stores nothing.
bad_crc = base64.b64encode(zlib.crc32(b"other").to_bytes(4, "big")).decode()
assert error_code(s3.put_object, Bucket=B, Key="bad/crc", Body=b"payload", ChecksumCRC32=bad_crc) == "BadDigest"
bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
assert error_code(s3.put_object, Bucket=B, Key="bad/md5", Body=b"payload", ContentMD5=bad_md5) == "BadDigest"
assert error_code(s3.head_object, Bucket=B, Key="bad/crc") in ("404", "NoSuchKey")
assert error_code(s3.head_object, Bucket=B, Key="bad/md5") in ("404", "NoSuchKey")
good_crc = base64.b64encode(zlib.crc32(b"payload").to_bytes(4, "big")).decode()
s3.put_object(Bucket=B, Key="good/crc", Body=b"payload", ChecksumCRC32=good_crc)
# The client's default checksum (CRC32 in a header over plain HTTP), and
# with it forced into an aws-chunked trailer.
s3.put_object(Bucket=B, Key="good/default", Body=b"defaults", ChecksumAlgorithm="SHA256")

# Copy: metadata copied, or replaced.
c = s3.copy_object(Bucket=B, Key="b/copy.txt", CopySource={"Bucket": B, "Key": "a/hello.txt"})
assert c["CopyObjectResult"]["ETag"] == f'"{md5}"'
h = s3.head_object(Bucket=B, Key="b/copy.txt")
assert h["Metadata"] == {"owner": "ada", "kind": "greeting"} and h["ContentType"] == "text/plain"
s3.copy_object(Bucket=B, Key="b/replaced.txt", CopySource={"Bucket": B, "Key": "a/hello.txt"},
               MetadataDirective="REPLACE", Metadata={"owner": "bob"}, ContentType="text/x-other")
h = s3.head_object(Bucket=B, Key="b/replaced.txt")
assert h["Metadata"] == {"owner": "bob"} and h["ContentType"] == "text/x-other"
assert s3.get_object(Bucket=B, Key="b/replaced.txt")["Body"].read() == body

# Listing: prefix, delimiter, pagination past 1000 keys, url encoding.
L = "many"
s3.create_bucket(Bucket=L)
keys = [f"k/{i:05d}" for i in range(1100)] + ["top.txt", "dir one/x+y z.txt", "dir one/b.txt"]
for k in keys:
    s3.put_object(Bucket=L, Key=k, Body=k.encode())
seen = []
pages = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=L):
    pages += 1
    seen += [o["Key"] for o in page.get("Contents", [])]
assert seen == sorted(keys), (len(seen), seen[:3])
assert pages == 2, pages
top = s3.list_objects_v2(Bucket=L, Delimiter="/")
assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["dir one/", "k/"], top["CommonPrefixes"]
assert [o["Key"] for o in top["Contents"]] == ["top.txt"]
# boto3 asks for url encoding itself and decodes; asked for by the user, it does not.
sub = s3.list_objects_v2(Bucket=L, Prefix="dir one/", Delimiter="/")
assert [o["Key"] for o in sub["Contents"]] == ["dir one/b.txt", "dir one/x+y z.txt"], sub["Contents"]
sub = s3.list_objects_v2(Bucket=L, Prefix="dir one/", Delimiter="/", EncodingType="url")
assert [o["Key"] for o in sub["Contents"]] == ["dir%20one/b.txt", "dir%20one/x%2By%20z.txt"], sub["Contents"]
small = s3.list_objects_v2(Bucket=L, Prefix="k/", MaxKeys=10, StartAfter="k/00005")
assert [o["Key"] for o in small["Contents"]] == [f"k/{i:05d}" for i in range(6, 16)]
assert small["IsTruncated"] and small["KeyCount"] == 10
nxt = s3.list_objects_v2(Bucket=L, Prefix="k/", MaxKeys=10, ContinuationToken=small["NextContinuationToken"])
assert nxt["Contents"][0]["Key"] == "k/00016"
v1 = s3.list_objects(Bucket=L, Prefix="k/", MaxKeys=3, Marker="k/00100")
assert [o["Key"] for o in v1["Contents"]] == ["k/00101", "k/00102", "k/00103"] and v1["IsTruncated"]

# Deletes.
s3.delete_object(Bucket=B, Key="b/copy.txt")
s3.delete_object(Bucket=B, Key="never/there")
assert error_code(s3.head_object, Bucket=B, Key="b/copy.txt") in ("404", "NoSuchKey")
out = s3.delete_objects(Bucket=L, Delete={"Objects": [{"Key": k} for k in keys[:1000]]})
assert len(out["Deleted"]) == 1000
assert s3.list_objects_v2(Bucket=L, Prefix="k/")["KeyCount"] == 100
assert error_code(s3.delete_bucket, Bucket=L) == "BucketNotEmpty"
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=L):
    s3.delete_objects(Bucket=L, Delete={"Objects": [{"Key": o["Key"]} for o in page["Contents"]]})
s3.delete_bucket(Bucket=L)
assert L not in [b["Name"] for b in s3.list_buckets()["Buckets"]]

# Multipart: upload_file over the threshold, 8 MiB parts, entity tag -N.
data = os.urandom(20 * 1024 * 1024 + 5)
cfg = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
s3.upload_fileobj(io.BytesIO(data), B, "big/blob.bin", Config=cfg)
h = s3.head_object(Bucket=B, Key="big/blob.bin")
assert h["ETag"].endswith('-3"'), h["ETag"]
parts = [data[i:i + 8 * 1024 * 1024] for i in range(0, len(data), 8 * 1024 * 1024)]
big_etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
assert h["ETag"] == f'"{big_etag}"', (h["ETag"], big_etag)
assert h["ContentLength"] == len(data)
assert s3.get_object(Bucket=B, Key="big/blob.bin")["Body"].read() == data
# By hand: list parts and uploads, a too small part, abort.
up = s3.create_multipart_upload(Bucket=B, Key="big/manual.bin", ContentType="application/x-test")
uid = up["UploadId"]
p1 = s3.upload_part(Bucket=B, Key="big/manual.bin", UploadId=uid, PartNumber=1, Body=b"a" * 1024)
p2 = s3.upload_part(Bucket=B, Key="big/manual.bin", UploadId=uid, PartNumber=2, Body=b"b" * 1024)
assert [p["PartNumber"] for p in s3.list_parts(Bucket=B, Key="big/manual.bin", UploadId=uid)["Parts"]] == [1, 2]
assert uid in [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=B)["Uploads"]]
done = {"Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]}
assert error_code(s3.complete_multipart_upload, Bucket=B, Key="big/manual.bin", UploadId=uid,
                  MultipartUpload=done) == "EntityTooSmall"
wrong = {"Parts": [{"PartNumber": 1, "ETag": p2["ETag"]}]}
assert error_code(s3.complete_multipart_upload, Bucket=B, Key="big/manual.bin", UploadId=uid,
                  MultipartUpload=wrong) == "InvalidPart"
s3.abort_multipart_upload(Bucket=B, Key="big/manual.bin", UploadId=uid)
assert error_code(s3.list_parts, Bucket=B, Key="big/manual.bin", UploadId=uid) == "NoSuchUpload"
assert error_code(s3.head_object, Bucket=B, Key="big/manual.bin") in ("404", "NoSuchKey")

# A wrong secret is refused.
assert error_code(client(secret="not-the-token").list_buckets) == "SignatureDoesNotMatch"
assert error_code(client(secret="not-the-token").get_object, Bucket=B, Key="a/hello.txt") == "SignatureDoesNotMatch"

# Notifications: one per acknowledged change, none for refused ones.
events = notifications(B)
got = [(e["type"].removeprefix("com.amazonaws.s3."), e["subject"]) for e in events]
want = [
    ("ObjectCreated:Put", "a/hello.txt"),
    ("ObjectCreated:Put", "a/new.txt"),
    ("ObjectCreated:Put", "good/crc"),
    ("ObjectCreated:Put", "good/default"),
    ("ObjectCreated:Copy", "b/copy.txt"),
    ("ObjectCreated:Copy", "b/replaced.txt"),
    ("ObjectRemoved:Delete", "b/copy.txt"),
    ("ObjectCreated:CompleteMultipartUpload", "big/blob.bin"),
]
assert got == want, got
first = events[0]
assert first["source"] == f"aws:s3.us-east-1.{B}" and first["partitionkey"] == "a/hello.txt"
rec = first["data"]
assert rec["eventVersion"] == "2.1" and rec["eventName"] == "ObjectCreated:Put"
assert rec["s3"]["bucket"]["name"] == B and rec["s3"]["bucket"]["arn"] == f"arn:aws:s3:::{B}"
assert rec["s3"]["object"]["key"] == "a/hello.txt"
assert rec["s3"]["object"]["size"] == len(body) and rec["s3"]["object"]["eTag"] == md5
big = events[-1]["data"]["s3"]["object"]
assert big["size"] == len(data) and big["eTag"] == big_etag, big
assert "size" not in events[6]["data"]["s3"]["object"]
seqs = [e["data"]["s3"]["object"]["sequencer"] for e in events]
assert seqs == sorted(seqs) and len(set(e["id"] for e in events)) == len(events)
print("ok")
