"""An S3 notification handler: for each uploaded object, reads it through
the S3 API the environment names (AWS_ENDPOINT_URL_S3, with the function's
own AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and writes its bytes,
upper-cased, under the same key to the bucket RESULTS names.

The package carries no AWS SDK, so requests are signed here with SigV4,
from the standard library alone."""
import datetime
import hashlib
import hmac
import json
import os
import urllib.parse
import urllib.request


def _signed(method, bucket, key, body=b""):
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    host = urllib.parse.urlsplit(endpoint).netloc
    region = os.environ.get("AWS_REGION", "us-east-1")
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    path = "/" + bucket + "/" + urllib.parse.quote(key, safe="/~")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, ""]
        + [f"{k}:{headers[k]}" for k in sorted(headers)]
        + ["", signed, payload]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = ("AWS4" + os.environ["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(endpoint + path, data=body or None, method=method)
    for name, value in headers.items():
        if name != "host":
            request.add_header(name, value)
    request.add_header(
        "Authorization",
        f"AWS4-HMAC-SHA256 Credential={os.environ['AWS_ACCESS_KEY_ID']}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read()


def handler(event, context):
    print(json.dumps(event))
    results = os.environ["RESULTS"]
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        data = _signed("GET", bucket, key)
        _signed("PUT", results, key, data.upper())
    return {"copied": len(event["Records"])}


def denied(event, context):
    """Writes to a bucket the function was not granted: must be refused."""
    _signed("PUT", os.environ["RESULTS"], "forbidden.txt", b"x")
    return {}
