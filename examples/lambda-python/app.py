"""An AWS Lambda handler for API Gateway HTTP API (payload 2.0) events, run
unmodified by Gale through AWS's Python runtime interface client."""

import base64
import json


def respond(status, payload):
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(payload),
    }


def handler(event, context):
    route = event.get("routeKey")
    if route == "GET /hello":
        name = (event.get("queryStringParameters") or {}).get("name", "world")
        return respond(200, {"hello": name, "request_id": context.aws_request_id})
    if route == "POST /orders":
        body = event.get("body") or ""
        if event.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        try:
            order = json.loads(body)
        except ValueError:
            return respond(400, {"error": "the body must be JSON"})
        return respond(201, {"order": order})
    return respond(404, {"error": f"no route {route}"})
