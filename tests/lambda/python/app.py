"""Handlers the process-runtime tests deploy under awslambdaric, one per behaviour."""
import json
import os
import time
import urllib.request


def web(event, context):
    """An API Gateway HTTP API (v2) handler."""
    query = event.get("queryStringParameters") or {}
    params = event.get("pathParameters") or {}
    body = {
        "route": event["routeKey"],
        "path": event["rawPath"],
        "method": event["requestContext"]["http"]["method"],
        "name": query.get("name"),
        "id": params.get("id"),
        "cookies": event.get("cookies", []),
        "body": event.get("body"),
        "base64": event["isBase64Encoded"],
        "request_id": context.aws_request_id,
        "function": context.function_name,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
    print("web handled", event["rawPath"])
    return {
        "statusCode": 201 if body["method"] == "POST" else 200,
        "headers": {"content-type": "application/json", "x-handler": "web"},
        "cookies": ["seen=1; Path=/"],
        "body": json.dumps(body),
    }


def echo(event, context):
    kind = event.get("detail-type", "") if isinstance(event, dict) else ""
    print("echo handling", context.aws_request_id, kind)
    return {"echo": event, "client_context": getattr(context.client_context, "custom", None)}


def fail(event, context):
    raise ValueError("bad input: " + json.dumps(event))


def crash(event, context):
    print("about to exit")
    os._exit(7)


def hang(event, context):
    time.sleep(60)


def hog(event, context):
    chunks = [bytearray(16 << 20) for _ in range(64)]
    return len(chunks)


def sqs(event, context):
    failed = [{"itemIdentifier": r["messageId"]} for r in event["Records"] if "bad" in r["body"]]
    print("sqs batch", len(event["Records"]), "failed", len(failed))
    return {"batchItemFailures": failed}


def publish(event, context):
    """Publishes through GALE_API, then fails if the event asks it to."""
    data = event.get("data") or {}
    request = urllib.request.Request(
        os.environ["GALE_API"] + "/_gale/topics/out/events",
        data=json.dumps({"n": data.get("n")}).encode(),
        headers={
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "out-" + event["id"],
            "ce-source": "/tests/publish",
            "ce-type": "published",
        },
        method="POST",
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 202
    if data.get("fail"):
        raise RuntimeError("failing after publishing")
    return {"ok": True}


def whoami(event, context):
    other = event.get("other")
    readable = None
    if other:
        try:
            with open(other) as f:
                f.read()
            readable = True
        except OSError:
            readable = False
    return {
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "env": sorted(os.environ),
        "task_root": os.environ["LAMBDA_TASK_ROOT"],
        "other_readable": readable,
    }
