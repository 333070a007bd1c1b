"""Uploads as boto3 sends them over HTTPS: `aws-chunked` bodies with the
checksum in a trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER). boto3 does so
only over TLS, so it is made to believe the endpoint is HTTPS; a wrong
trailing checksum must store nothing and notify nothing."""

import io
from urllib.parse import urlparse

import botocore.httpchecksum as h
from boto3.s3.transfer import TransferConfig

from common import client, error_code, notifications

h.urlparse = lambda url: urlparse(url.replace("http:", "https:", 1))

s3 = client()
s3.create_bucket(Bucket="chunked")
seen = []
s3.meta.events.register("before-send.s3.*", lambda request, **kw: seen.append(dict(request.headers)))

s3.put_object(Bucket="chunked", Key="ok.txt", Body=b"chunked hello")
sent = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in seen[-1].items()}
assert sent.get("x-amz-content-sha256") == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", sent
assert s3.get_object(Bucket="chunked", Key="ok.txt")["Body"].read() == b"chunked hello"

# Parts of a multipart upload too.
data = b"x" * (9 * 1024 * 1024)
cfg = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
s3.upload_fileobj(io.BytesIO(data), "chunked", "big.bin", Config=cfg)
assert s3.get_object(Bucket="chunked", Key="big.bin")["Body"].read() == data


class Wrong(h.Crc32Checksum):
    def digest(self):
        return b"\0\0\0\0"


h._CHECKSUM_CLS["crc32"] = Wrong
assert error_code(s3.put_object, Bucket="chunked", Key="bad.txt", Body=b"chunked hello") == "BadDigest"
assert error_code(s3.head_object, Bucket="chunked", Key="bad.txt") in ("404", "NoSuchKey")

names = [(e["type"].removeprefix("com.amazonaws.s3."), e["subject"]) for e in notifications("chunked")]
assert names == [("ObjectCreated:Put", "ok.txt"), ("ObjectCreated:CompleteMultipartUpload", "big.bin")], names
print("ok")
