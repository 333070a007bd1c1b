"""Sends N orders to the RabbitMQ queue `orders` with pika, RabbitMQ's
Python client, as any other service would: persistent messages with a
message id (Gale derives each event's id from it, so a message redelivered
after a crash is stored once).

    python3 send_orders.py [N] [amqp URL]

QUEUE names another queue than `orders`.
"""
import json
import os
import sys

import pika

n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
url = sys.argv[2] if len(sys.argv) > 2 else "amqp://guest:guest@127.0.0.1:5672/%2f"
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
queue = os.environ.get("QUEUE", "orders")
channel.queue_declare(queue=queue, durable=True)
channel.confirm_delivery()
for i in range(1, n + 1):
    order = {"id": i, "customer": ["ada", "grace", "alan"][i % 3], "items": [{"sku": "tea", "qty": i, "price": 3.5}]}
    channel.basic_publish(
        exchange="",
        routing_key=queue,
        body=json.dumps(order),
        properties=pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=f"order-{i}"
        ),
    )
print(f"sent {n} orders")
connection.close()
