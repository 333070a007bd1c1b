"""Orders in PostgreSQL: two Lambda handlers that never call each other.

`place` answers POST /orders (API Gateway's HTTP event) by inserting a
row. `ship` is a DynamoDB Streams handler: Gale's `orders-db` source reads
the table's committed changes, and the trigger's `format = "dynamodb"`
hands them over as stream records (`INSERT`, typed `NewImage`). A record
it cannot handle goes back in `batchItemFailures`, and is retried with the
ones after it, as Lambda does for streams.
"""
import json
import os
import urllib.parse

import pg8000.native


def connect():
    url = urllib.parse.urlparse(os.environ["DATABASE_URL"])
    return pg8000.native.Connection(
        user=urllib.parse.unquote(url.username or "postgres"),
        password=urllib.parse.unquote(url.password) if url.password else None,
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        database=url.path.lstrip("/") or "postgres",
    )


def place(event, context):
    order = json.loads(event.get("body") or "{}")
    missing = {"customer", "item", "qty"} - set(order)
    if missing:
        return {"statusCode": 400, "body": json.dumps({"error": f"missing {', '.join(sorted(missing))}"})}
    conn = connect()
    try:
        [[order_id]] = conn.run(
            "INSERT INTO orders (customer, item, qty) VALUES (:customer, :item, :qty) RETURNING id",
            customer=order["customer"],
            item=order["item"],
            qty=int(order["qty"]),
        )
    finally:
        conn.close()
    return {"statusCode": 201, "body": json.dumps({"id": order_id, "status": "placed"})}


def ship(event, context):
    failures = []
    conn = connect()
    try:
        for record in event["Records"]:
            if record["eventName"] != "INSERT":
                continue
            row = record["dynamodb"]["NewImage"]
            order_id = int(row["id"]["N"])
            try:
                print(f"shipping order {order_id}: {row['qty']['N']} x {row['item']['S']} to {row['customer']['S']}")
                conn.run("UPDATE orders SET status = 'shipped' WHERE id = :id", id=order_id)
            except Exception as e:  # retried with the records after it
                print(f"order {order_id} not shipped: {e}")
                failures.append({"itemIdentifier": record["dynamodb"]["SequenceNumber"]})
    finally:
        conn.close()
    return {"batchItemFailures": failures}
