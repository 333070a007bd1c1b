"""Reads N `order_shipped` messages from NATS JetStream with nats-py,
NATS's Python client: the stream `SHIPPED` (made here if missing) captures
the subject `shop.shipped` the sink publishes to. Each message's body is
the event's data; its CloudEvents attributes are `ce-` headers.

    python3 read_shipped.py [N] [nats URL]

SUBJECT and STREAM name another subject and stream.
"""
import asyncio
import json
import os
import sys

import nats
from nats.js.api import StreamConfig


async def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    nc = await nats.connect(sys.argv[2] if len(sys.argv) > 2 else "nats://127.0.0.1:4222")
    js = nc.jetstream()
    subject = os.environ.get("SUBJECT", "shop.shipped")
    await js.add_stream(StreamConfig(name=os.environ.get("STREAM", "SHIPPED"), subjects=[subject]))
    sub = await js.pull_subscribe(subject, durable="reader")
    got = 0
    print("waiting for shipments", flush=True)
    while got < n:
        for msg in await sub.fetch(n - got, timeout=30):
            data = json.loads(msg.data)
            print(f"{msg.headers['ce-type']} {msg.headers['ce-id']}: order {data['order']} for {data['customer']}, total {data['total']}", flush=True)
            await msg.ack()
            got += 1
    await nc.close()


asyncio.run(main())
