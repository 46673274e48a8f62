#!/usr/bin/env python3
"""Benchmark peer: Python aiohttp (Debian's python3-aiohttp), one ClientSession
over a TCPConnector(limit=C), doing the work of wix_concurrent.lua: E events,
each a Create Package V2 then a Get Package of the created package, with C
workers (asyncio.gather) each taking the next event, so exactly C are in flight.

    peer_aiohttp.py BASE_URL EVENTS CONCURRENCY

Prints the elapsed seconds of the work (interpreter start-up and imports not
included). Exits non-zero on any non-200 answer or a Get that returns another
package.
"""
import asyncio
import os
import sys
import time
import uuid

import aiohttp

ACCOUNT = "33333333-4444-4555-8666-777777777777"
PRODUCT = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03"


async def run(base, events, c):
    headers = {"Authorization": os.environ.get("WIX_API_KEY", "bench-key"), "wix-account-id": ACCOUNT}
    create_url = base + "/resellers/v2/packages"
    next_event = 0

    async def worker(s):
        nonlocal next_event
        while next_event < events:
            i = next_event
            next_event += 1
            body = {"products": [{"catalogProductId": PRODUCT, "countryCode": "DE"}],
                    "idempotencyKey": str(uuid.uuid4())}
            async with s.post(create_url, json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"event {i}: create answered {r.status}: {(await r.text())[:300]}")
                pid = (await r.json())["package"]["id"]
            async with s.get(f"{base}/resellers/v1/packages/{pid}") as r:
                if r.status != 200:
                    raise RuntimeError(f"event {i}: get answered {r.status}: {(await r.text())[:300]}")
                if (await r.json())["package"]["id"] != pid:
                    raise RuntimeError(f"event {i}: get returned another package")

    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=c)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(s) for _ in range(min(c, events))))
        return time.perf_counter() - t0


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: peer_aiohttp.py BASE_URL EVENTS CONCURRENCY")
    try:
        secs = asyncio.run(run(sys.argv[1].rstrip("/"), int(sys.argv[2]), int(sys.argv[3])))
    except (RuntimeError, aiohttp.ClientError) as e:
        sys.exit(f"peer_aiohttp: {e}")
    print(f"{secs:.6f}")


if __name__ == "__main__":
    main()
