"""Issued S3 keys against a Gale node, with boto3: a key reaches only its
buckets, a read-only key only reads, a copy needs to read its source, a
revoked key or a wrong secret is refused, and the admin token under any
key id may do everything. A refused change stores and notifies nothing."""

import os

from admin import as_key, create_key, key_ids, revoke_key
from common import client, error_code, notifications


def missing(s3, bucket, key):
    return error_code(s3.head_object, Bucket=bucket, Key=key) in ("404", "NoSuchKey")


# S3 bucket names have 3 characters at least: buckets `a` and `b` of the story.
A, B, C = "bucket-a", "bucket-b", "bucket-c"
DENIED = "AccessDenied"
admin = client()
admin.create_bucket(Bucket=A)
admin.create_bucket(Bucket=B)
admin.put_object(Bucket=A, Key="seed.txt", Body=b"in a")
admin.put_object(Bucket=B, Key="secret.txt", Body=b"in b")

# A read-write key for `a`: everything with objects in `a`.
k = create_key([A])
assert k["id"] in key_ids()
rw = as_key(k["id"], k["secret"])
rw.put_object(Bucket=A, Key="rw.txt", Body=b"written by rw")
assert rw.get_object(Bucket=A, Key="rw.txt")["Body"].read() == b"written by rw"
assert rw.head_object(Bucket=A, Key="seed.txt")["ContentLength"] == 4
rw.head_bucket(Bucket=A)
assert sorted(o["Key"] for o in rw.list_objects_v2(Bucket=A)["Contents"]) == ["rw.txt", "seed.txt"]
assert [o["Key"] for o in rw.list_objects(Bucket=A)["Contents"]] == ["rw.txt", "seed.txt"]
rw.copy_object(Bucket=A, Key="rw-copy.txt", CopySource={"Bucket": A, "Key": "rw.txt"})
assert rw.get_object(Bucket=A, Key="rw-copy.txt")["Body"].read() == b"written by rw"
rw.delete_object(Bucket=A, Key="rw-copy.txt")
assert missing(admin, A, "rw-copy.txt")
up = rw.create_multipart_upload(Bucket=A, Key="rw-parts.bin")
rw.abort_multipart_upload(Bucket=A, Key="rw-parts.bin", UploadId=up["UploadId"])
# Listing buckets takes any key.
rw.list_buckets()

# ... but nothing in `b`: no read, no write, no listing.
assert error_code(rw.get_object, Bucket=B, Key="secret.txt") == DENIED
assert error_code(rw.head_object, Bucket=B, Key="secret.txt") == "403"
assert error_code(rw.head_bucket, Bucket=B) == "403"
assert error_code(rw.put_object, Bucket=B, Key="intruder.txt", Body=b"x") == DENIED
assert error_code(rw.list_objects_v2, Bucket=B) == DENIED
assert error_code(rw.list_objects, Bucket=B) == DENIED
assert error_code(rw.delete_object, Bucket=B, Key="secret.txt") == DENIED
assert error_code(rw.delete_objects, Bucket=B, Delete={"Objects": [{"Key": "secret.txt"}]}) == DENIED
assert error_code(rw.create_multipart_upload, Bucket=B, Key="intruder.bin") == DENIED
assert missing(admin, B, "intruder.txt")
assert admin.get_object(Bucket=B, Key="secret.txt")["Body"].read() == b"in b"
# ... and no making or deleting buckets, not even its own.
assert error_code(rw.create_bucket, Bucket=C) == DENIED
assert error_code(rw.delete_bucket, Bucket=A) == DENIED
assert error_code(rw.delete_bucket, Bucket=B) == DENIED
names = [x["Name"] for x in admin.list_buckets()["Buckets"]]
assert C not in names and A in names and B in names, names

# A copy from `b` into `a` reads `b`: refused, and nothing is stored.
assert error_code(rw.copy_object, Bucket=A, Key="stolen.txt",
                  CopySource={"Bucket": B, "Key": "secret.txt"}) == DENIED
assert error_code(rw.copy_object, Bucket=A, Key="stolen.txt", CopySource=f"/{B}/secret.txt") == DENIED
assert missing(admin, A, "stolen.txt")

# A read-only key for `a`: get, head, list; no put, delete or copy.
r = create_key([A], read_only=True)
ro = as_key(r["id"], r["secret"])
assert ro.get_object(Bucket=A, Key="seed.txt")["Body"].read() == b"in a"
assert ro.get_object(Bucket=A, Key="seed.txt", Range="bytes=0-1")["Body"].read() == b"in"
assert ro.head_object(Bucket=A, Key="rw.txt")["ContentLength"] == len(b"written by rw")
ro.head_bucket(Bucket=A)
assert [o["Key"] for o in ro.list_objects_v2(Bucket=A)["Contents"]] == ["rw.txt", "seed.txt"]
assert error_code(ro.put_object, Bucket=A, Key="ro.txt", Body=b"refused") == DENIED
assert missing(admin, A, "ro.txt")
assert error_code(ro.put_object, Bucket=A, Key="seed.txt", Body=b"overwritten") == DENIED
assert admin.get_object(Bucket=A, Key="seed.txt")["Body"].read() == b"in a"
assert error_code(ro.delete_object, Bucket=A, Key="seed.txt") == DENIED
assert error_code(ro.delete_objects, Bucket=A, Delete={"Objects": [{"Key": "seed.txt"}]}) == DENIED
assert error_code(ro.copy_object, Bucket=A, Key="ro-copy.txt",
                  CopySource={"Bucket": A, "Key": "seed.txt"}) == DENIED
assert error_code(ro.create_multipart_upload, Bucket=A, Key="ro-parts.bin") == DENIED
assert missing(admin, A, "ro-copy.txt")
assert admin.head_object(Bucket=A, Key="seed.txt")["ContentLength"] == 4
assert error_code(ro.get_object, Bucket=B, Key="secret.txt") == DENIED
assert error_code(ro.create_bucket, Bucket=C) == DENIED

# A wrong secret for an issued key id; the admin token is one too: an
# issued key's id is checked against its own secret only.
assert error_code(as_key(k["id"], "not-the-secret").get_object, Bucket=A, Key="seed.txt") == "SignatureDoesNotMatch"
assert error_code(as_key(k["id"], r["secret"]).list_objects_v2, Bucket=A) == "SignatureDoesNotMatch"
assert error_code(as_key(k["id"], os.environ["GALE_TOKEN"]).get_object,
                  Bucket=B, Key="secret.txt") == "SignatureDoesNotMatch"
assert error_code(as_key(k["id"], "not-the-secret").put_object,
                  Bucket=A, Key="wrong.txt", Body=b"x") == "SignatureDoesNotMatch"
assert missing(admin, A, "wrong.txt")

# A revoked key fails: its id is no longer known, so the request must be
# signed with the admin token, and the key's secret does not match.
revoke_key(k["id"])
assert k["id"] not in key_ids() and r["id"] in key_ids()
assert error_code(rw.get_object, Bucket=A, Key="seed.txt") == "SignatureDoesNotMatch"
assert error_code(rw.put_object, Bucket=A, Key="revoked.txt", Body=b"x") == "SignatureDoesNotMatch"
assert error_code(rw.list_objects_v2, Bucket=A) == "SignatureDoesNotMatch"
assert error_code(rw.list_buckets) == "SignatureDoesNotMatch"
assert missing(admin, A, "revoked.txt")
# The other key still works.
assert ro.get_object(Bucket=A, Key="seed.txt")["Body"].read() == b"in a"

# The admin token, under any key id the node did not issue, may do everything.
for key_id in ["operator", "AKIAIOSFODNN7EXAMPLE", k["id"]]:
    op = as_key(key_id, os.environ["GALE_TOKEN"])
    op.create_bucket(Bucket=C)
    op.put_object(Bucket=B, Key="by-admin.txt", Body=key_id.encode())
    op.copy_object(Bucket=C, Key="copied.txt", CopySource={"Bucket": B, "Key": "secret.txt"})
    assert op.get_object(Bucket=C, Key="copied.txt")["Body"].read() == b"in b"
    assert [o["Key"] for o in op.list_objects_v2(Bucket=B)["Contents"]] == ["by-admin.txt", "secret.txt"]
    op.delete_object(Bucket=C, Key="copied.txt")
    op.delete_object(Bucket=B, Key="by-admin.txt")
    op.delete_bucket(Bucket=C)

# Notifications: the acknowledged changes only.
got = {bucket: [(e["type"].removeprefix("com.amazonaws.s3."), e["subject"]) for e in notifications(bucket)]
       for bucket in [A, B]}
assert got[A] == [
    ("ObjectCreated:Put", "seed.txt"),
    ("ObjectCreated:Put", "rw.txt"),
    ("ObjectCreated:Copy", "rw-copy.txt"),
    ("ObjectRemoved:Delete", "rw-copy.txt"),
], got[A]
assert got[B] == [("ObjectCreated:Put", "secret.txt")] + [
    ("ObjectCreated:Put", "by-admin.txt"),
    ("ObjectRemoved:Delete", "by-admin.txt"),
] * 3, got[B]
print("ok")
