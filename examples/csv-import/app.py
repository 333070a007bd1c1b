"""CSV import: two Lambda handlers that never call each other.

`handle_upload` runs for each CSV uploaded to the `imports` bucket (S3's
notification document, as Lambda delivers it). It reads the file with
boto3 (Gale sets AWS_ENDPOINT_URL_S3 and a key of the function's own),
writes a JSON summary to the `reports` bucket and publishes an
`orders_imported` event. `notify` consumes those events.
"""
import csv
import io
import json
import os
import urllib.parse
import urllib.request

import boto3

s3 = boto3.client("s3")


def handle_upload(event, context):
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        missing = {"order_id", "customer", "amount"} - set(rows[0] if rows else {})
        if missing:
            raise ValueError(f"{key}: no column {', '.join(sorted(missing))}")
        report = {
            "file": f"s3://{bucket}/{key}",
            "orders": len(rows),
            "total": round(sum(float(r["amount"]) for r in rows), 2),
            "customers": sorted({r["customer"] for r in rows}),
        }
        report_key = key.rsplit(".", 1)[0] + ".json"
        s3.put_object(
            Bucket="reports",
            Key=report_key,
            Body=json.dumps(report, indent=2).encode(),
            ContentType="application/json",
        )
        publish(
            "orders-imported",
            # The upload's key and ETag name the event: a retried import
            # publishes the same id, which the topic stores once.
            event_id=f"{key}@{record['s3']['object']['eTag']}",
            data={**report, "report": f"s3://reports/{report_key}"},
        )
        print(f"imported {report['orders']} orders from {key}")
    return {"imported": len(event["Records"])}


def publish(topic, event_id, data):
    """Publishes a CloudEvent through Gale (committed only if this
    invocation succeeds)."""
    request = urllib.request.Request(
        os.environ["GALE_API"] + f"/_gale/topics/{topic}/events",
        data=json.dumps(data).encode(),
        headers={
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/examples/csv-import",
            "ce-type": "orders_imported",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def notify(event, context):
    data = event["data"]
    print(f"{data['orders']} orders worth {data['total']} imported from {data['file']}; report at {data['report']}")
    return {}
