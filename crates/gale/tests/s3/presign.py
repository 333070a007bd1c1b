"""Presigned URLs against a Gale node: made by boto3 (its default for S3,
which is SigV2 query authentication, and SigV4) and by `aws s3 presign`,
used by a client that signs nothing (urllib). They work until they
expire, not once tampered with, only within the signing key's rights; a
presigned PUT stores the object and notifies exactly once."""

import hashlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from admin import as_key, create_key, revoke_key
from common import client, error_code, notifications


def fetch(url, method="GET", body=None, headers=None):
    """Status, headers, body and S3 error code (or None) of a plain request."""
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers, r.read(), None
    except urllib.error.HTTPError as e:
        data = e.read()
        code = ET.fromstring(data).findtext("Code") if data else None
        return e.code, e.headers, data, code


def query(url):
    return dict(parse_qsl(urlsplit(url).query))


def with_query(url, **changes):
    """The URL with some query parameters changed (or added)."""
    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query))
    q.update(changes)
    return urlunsplit(parts._replace(query=urlencode(q)))


def with_path(url, path):
    return urlunsplit(urlsplit(url)._replace(path=path))


def refused(url, code, method="GET", **kw):
    status, _, body, got = fetch(url, method, **kw)
    assert status == 403 and got == code, (url, status, got, body)


def is_v2(url):
    q = query(url)
    return {"AWSAccessKeyId", "Signature", "Expires"} <= q.keys() and "X-Amz-Algorithm" not in q


def is_v4(url):
    q = query(url)
    return q.get("X-Amz-Algorithm") == "AWS4-HMAC-SHA256" and "X-Amz-Signature" in q and "Signature" not in q


admin = client()
v2 = client()  # boto3's default for presigning S3
v4 = client(signature_version="s3v4")
S = "share"
admin.create_bucket(Bucket=S)
KEY = "dir one/x+y z.txt"
body = b"shared bytes\n" * 50
admin.put_object(Bucket=S, Key=KEY, Body=body)
admin.put_object(Bucket=S, Key="other.txt", Body=b"other")
admin.create_bucket(Bucket="private")
admin.put_object(Bucket="private", Key="p.txt", Body=b"private")

# What each presigns: boto3 by default SigV2 query authentication
# (AWSAccessKeyId, Signature, Expires); s3v4 asked for, SigV4.
default_url = v2.generate_presigned_url("get_object", Params={"Bucket": S, "Key": KEY}, ExpiresIn=300)
assert is_v2(default_url), ("boto3 no longer presigns S3 with SigV2 by default", default_url)
assert query(default_url)["AWSAccessKeyId"] == os.environ["AWS_ACCESS_KEY_ID"]
v4_url = v4.generate_presigned_url("get_object", Params={"Bucket": S, "Key": KEY}, ExpiresIn=300)
assert is_v4(v4_url) and query(v4_url)["X-Amz-SignedHeaders"] == "host", v4_url

# Both fetched unsigned: 200 and the bytes (the key needs escaping: %20, %2B).
for url in (default_url, v4_url):
    assert "/dir%20one/x%2By%20z.txt?" in url, url
    status, headers, got, _ = fetch(url)
    assert status == 200 and got == body, (url, status, got[:100])
    assert headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    status, _, got, _ = fetch(url, headers={"Range": "bytes=0-5"})
    assert status == 206 and got == body[:6], (status, got)
# HEAD, presigned as such.
for s3 in (v2, v4):
    url = s3.generate_presigned_url("head_object", Params={"Bucket": S, "Key": KEY})
    status, headers, _, _ = fetch(url, method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) == len(body), status
# A download link: the response overrides are honored, and signed.
for s3 in (v2, v4):
    url = s3.generate_presigned_url("get_object", Params={
        "Bucket": S, "Key": KEY, "ResponseContentDisposition": "attachment; filename=x.txt",
        "ResponseContentType": "application/x-test", "ResponseCacheControl": "no-store"})
    status, headers, got, _ = fetch(url)
    assert status == 200 and got == body, (url, status)
    assert headers["Content-Disposition"] == "attachment; filename=x.txt", dict(headers)
    assert headers["Content-Type"] == "application/x-test" and headers["Cache-Control"] == "no-store"
    refused(with_query(url, **{"response-content-disposition": "inline"}), "SignatureDoesNotMatch")

# A request with no signature at all.
refused(f"{os.environ['AWS_ENDPOINT_URL']}/{S}/other.txt", "AccessDenied")

# Tampered with: another signature, another object, a longer life, another key id.
for url in (default_url, v4_url):
    sig = "Signature" if is_v2(url) else "X-Amz-Signature"
    s = query(url)[sig]
    refused(with_query(url, **{sig: ("a" if s[0] != "a" else "b") + s[1:]}), "SignatureDoesNotMatch")
    refused(with_path(url, f"/{S}/other.txt"), "SignatureDoesNotMatch")
    refused(with_path(url, "/private/p.txt"), "SignatureDoesNotMatch")
    refused(url, "SignatureDoesNotMatch", method="DELETE")
    if is_v2(url):
        refused(with_query(url, Expires=str(int(query(url)["Expires"]) + 3600)), "SignatureDoesNotMatch")
    else:
        refused(with_query(url, **{"X-Amz-Expires": "604800"}), "SignatureDoesNotMatch")
        cred = query(url)["X-Amz-Credential"].replace("operator/", "someone-else/", 1)
        refused(with_query(url, **{"X-Amz-Credential": cred}), "SignatureDoesNotMatch")
    # (Under SigV2 the key id is not signed, and every id the node did not
    # issue stands for the admin token: another such id changes nothing.)
assert admin.get_object(Bucket=S, Key=KEY)["Body"].read() == body

# Expired: one second of life, two seconds later.
short = [s3.generate_presigned_url("get_object", Params={"Bucket": S, "Key": KEY}, ExpiresIn=1)
         for s3 in (v2, v4)]
assert is_v2(short[0]) and is_v4(short[1]), short
time.sleep(2)
for url in short:
    refused(url, "AccessDenied")

# The AWS CLI's `aws s3 presign`.
out = subprocess.run(["aws", "--endpoint-url", os.environ["AWS_ENDPOINT_URL"], "s3", "presign",
                      f"s3://{S}/{KEY}", "--expires-in", "300"], capture_output=True, text=True)
assert out.returncode == 0, (out.stdout, out.stderr)
cli_url = out.stdout.strip()
assert is_v2(cli_url) or is_v4(cli_url), cli_url
print("aws s3 presign emits", "SigV2" if is_v2(cli_url) else "SigV4", file=sys.stderr)
status, _, got, _ = fetch(cli_url)
assert status == 200 and got == body, (cli_url, status)

# Presigned with an issued key: only what the key may do.
ro = create_key([S], read_only=True)
for s3 in (as_key(ro["id"], ro["secret"]), as_key(ro["id"], ro["secret"], signature_version="s3v4")):
    url = s3.generate_presigned_url("get_object", Params={"Bucket": S, "Key": KEY})
    assert query(url).get("AWSAccessKeyId", ro["id"]) == ro["id"] and ro["id"] in url, url
    assert fetch(url)[0:3:2] == (200, body)
    refused(s3.generate_presigned_url("get_object", Params={"Bucket": "private", "Key": "p.txt"}), "AccessDenied")
    refused(s3.generate_presigned_url("put_object", Params={"Bucket": S, "Key": "ro.txt"}), "AccessDenied",
            method="PUT", body=b"refused", headers={"Content-Type": ""})
    refused(s3.generate_presigned_url("delete_object", Params={"Bucket": S, "Key": KEY}), "AccessDenied",
            method="DELETE")
url = as_key(ro["id"], ro["secret"]).generate_presigned_url("get_object", Params={"Bucket": S, "Key": KEY})
assert fetch(url)[0] == 200
# A URL's key id swapped for another: the other's secret does not match,
# either way round (an issued key's URL made the admin's, and back).
for s3 in (v2, v4):
    for url in (s3.generate_presigned_url("get_object", Params={"Bucket": S, "Key": KEY}),
                as_key(ro["id"], ro["secret"], signature_version=s3.meta.config.signature_version)
                .generate_presigned_url("get_object", Params={"Bucket": S, "Key": KEY})):
        mine, theirs = ("operator", ro["id"]) if "operator" in url else (ro["id"], "operator")
        if is_v2(url):
            refused(with_query(url, AWSAccessKeyId=theirs), "SignatureDoesNotMatch")
        else:
            cred = query(url)["X-Amz-Credential"].replace(mine, theirs, 1)
            refused(with_query(url, **{"X-Amz-Credential": cred}), "SignatureDoesNotMatch")
revoke_key(ro["id"])
refused(url, "SignatureDoesNotMatch")
assert error_code(admin.head_object, Bucket=S, Key="ro.txt") in ("404", "NoSuchKey")
assert admin.get_object(Bucket=S, Key=KEY)["Body"].read() == body

# Presigned PUTs: a plain HTTP PUT uploads, once; refused ones store nothing.
D = "drop"
admin.create_bucket(Bucket=D)
up = b"uploaded without signing\n" * 10
# SigV2 signs the content type: the uploader must send the one presigned.
url = v2.generate_presigned_url("put_object", Params={"Bucket": D, "Key": "by v2.txt", "ContentType": "text/plain"})
assert is_v2(url), url
status, headers, _, code = fetch(url, "PUT", up, {"Content-Type": "text/plain"})
assert status == 200 and headers["ETag"] == f'"{hashlib.md5(up).hexdigest()}"', (status, code)
refused(url, "SignatureDoesNotMatch", "PUT", body=b"other type", headers={"Content-Type": "text/html"})
# SigV4 signs only the host here: any content type goes.
url = v4.generate_presigned_url("put_object", Params={"Bucket": D, "Key": "by-v4.bin"})
assert is_v4(url) and query(url)["X-Amz-SignedHeaders"] == "host", url
status, _, _, code = fetch(url, "PUT", up + b"v4")
assert status == 200, (status, code)
# Refused: expired, tampered with (another key), unsigned.
late = [s3.generate_presigned_url("put_object", Params={"Bucket": D, "Key": "late.txt"}, ExpiresIn=1)
        for s3 in (v2, v4)]
time.sleep(2)
for url in late:
    refused(url, "AccessDenied", "PUT", body=b"late", headers={"Content-Type": ""})
for s3 in (v2, v4):
    url = s3.generate_presigned_url("put_object", Params={"Bucket": D, "Key": "here.txt"})
    refused(with_path(url, f"/{D}/elsewhere.txt"), "SignatureDoesNotMatch", "PUT", body=b"x",
            headers={"Content-Type": ""})
    refused(with_path(url, f"/{S}/here.txt"), "SignatureDoesNotMatch", "PUT", body=b"x",
            headers={"Content-Type": ""})
refused(f"{os.environ['AWS_ENDPOINT_URL']}/{D}/unsigned.txt", "AccessDenied", "PUT", body=b"x")

got = admin.get_object(Bucket=D, Key="by v2.txt")
assert got["Body"].read() == up and got["ContentType"] == "text/plain", got["ContentType"]
assert admin.get_object(Bucket=D, Key="by-v4.bin")["Body"].read() == up + b"v4"
assert sorted(o["Key"] for o in admin.list_objects_v2(Bucket=D)["Contents"]) == ["by v2.txt", "by-v4.bin"]
events = notifications(D)
got = [(e["type"].removeprefix("com.amazonaws.s3."), e["subject"]) for e in events]
assert got == [("ObjectCreated:Put", "by v2.txt"), ("ObjectCreated:Put", "by-v4.bin")], got
assert events[0]["data"]["s3"]["object"]["size"] == len(up)
assert events[1]["data"]["s3"]["object"]["size"] == len(up) + 2
# A browser form upload (presigned POST) is named as S3 names it.
form = v4.generate_presigned_post(D, "by-form.txt")
boundary = "galeformboundary"
parts = b"".join(
    f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for k, v in form["fields"].items()
)
parts += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.txt"\r\n'
          f"Content-Type: text/plain\r\n\r\n").encode() + b"form!\r\n" + f"--{boundary}--\r\n".encode()
status, _, _, code = fetch(form["url"], "POST", parts,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
assert status in (200, 204), (status, code)
last = notifications(D)[-1]
assert (last["type"], last["subject"]) == ("com.amazonaws.s3.ObjectCreated:Post", "by-form.txt"), last
# Nothing changed in `share` (its two puts by the admin only).
assert len(notifications(S)) == 2, notifications(S)
print("ok")
