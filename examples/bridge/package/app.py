"""Bridge: an Amazon MQ (RabbitMQ) Lambda handler, unmodified.

Gale hands `fulfil` the messages of the `orders` queue in Lambda's
RabbitMQ payload: `rmqMessagesByQueue`, each message's body base64 in
`data`. For each order it publishes an `order_shipped` event to the topic
`shipped` through Gale (committed only if this invocation succeeds),
which the `shipped-out` sink forwards to NATS.
"""
import base64
import json
import os
import urllib.request


def fulfil(event, context):
    shipped = 0
    for queue, messages in event["rmqMessagesByQueue"].items():
        for message in messages:
            order = json.loads(base64.b64decode(message["data"]))
            total = round(sum(i["qty"] * i["price"] for i in order["items"]), 2)
            publish(
                "shipped",
                # The order names the event: a retried batch publishes the
                # same ids, which the topic stores once.
                event_id=f"shipped-{order['id']}",
                data={"order": order["id"], "customer": order["customer"], "total": total},
            )
            print(f"{queue}: order {order['id']} for {order['customer']} shipped, total {total}")
            shipped += 1
    return {"shipped": shipped}


def publish(topic, event_id, data):
    request = urllib.request.Request(
        os.environ["GALE_API"] + f"/_gale/topics/{topic}/events",
        data=json.dumps(data).encode(),
        headers={
            "content-type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/examples/bridge",
            "ce-type": "order_shipped",
            "ce-partitionkey": str(data["order"]),
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
