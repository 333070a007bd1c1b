"""UploadPartCopy: a multipart upload made partly from ranges of an
existing object, as `aws s3 cp` does for large copies."""

import hashlib

from common import client, error_code, notifications

s3 = client()
s3.create_bucket(Bucket="parts")
source = bytes(range(256)) * (6 * 4096)  # 6 MiB
s3.put_object(Bucket="parts", Key="source.bin", Body=source)

up = s3.create_multipart_upload(Bucket="parts", Key="joined.bin")["UploadId"]
first = s3.upload_part_copy(
    Bucket="parts", Key="joined.bin", UploadId=up, PartNumber=1,
    CopySource={"Bucket": "parts", "Key": "source.bin"}, CopySourceRange=f"bytes=0-{5 * 1024 * 1024 - 1}",
)["CopyPartResult"]["ETag"]
second = s3.upload_part(Bucket="parts", Key="joined.bin", UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
assert first.strip('"') == hashlib.md5(source[: 5 * 1024 * 1024]).hexdigest(), first
assert error_code(
    s3.upload_part_copy, Bucket="parts", Key="joined.bin", UploadId=up, PartNumber=3,
    CopySource={"Bucket": "parts", "Key": "source.bin"}, CopySourceIfMatch='"not-the-etag"',
) == "PreconditionFailed"
assert error_code(
    s3.upload_part_copy, Bucket="parts", Key="joined.bin", UploadId=up, PartNumber=3,
    CopySource={"Bucket": "parts", "Key": "nothing.bin"},
) == "NoSuchKey"
s3.complete_multipart_upload(
    Bucket="parts", Key="joined.bin", UploadId=up,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]},
)
got = s3.get_object(Bucket="parts", Key="joined.bin")["Body"].read()
assert got == source[: 5 * 1024 * 1024] + b"tail", len(got)
names = [(e["type"].removeprefix("com.amazonaws.s3."), e["subject"]) for e in notifications("parts")]
assert names == [
    ("ObjectCreated:Put", "source.bin"),
    ("ObjectCreated:CompleteMultipartUpload", "joined.bin"),
], names
print("ok")
