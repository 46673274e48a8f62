#!/usr/bin/env python3
"""Benchmark peer: Python requests.Session doing N sequential Create Package V2
+ Get Package pairs, the same calls as wix_seq.lua (same headers and body).

    peer_requests.py BASE_URL [PAIRS]     (PAIRS defaults to $BENCH_PAIRS, else 5000)

Prints the elapsed seconds of the loop (interpreter start-up not included).
Exits non-zero on any non-200 answer or a Get that returns another package.
"""
import os
import sys
import time
import uuid

import requests

ACCOUNT = "33333333-4444-4555-8666-777777777777"
PRODUCT = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03"


def main():
    base = sys.argv[1].rstrip("/")
    pairs = int(sys.argv[2] if len(sys.argv) > 2 else os.environ.get("BENCH_PAIRS", "5000"))
    s = requests.Session()
    s.headers.update({"Authorization": os.environ.get("WIX_API_KEY", "bench-key"),
                      "wix-account-id": ACCOUNT,
                      "Content-Type": "application/json"})
    create_url = base + "/resellers/v2/packages"
    t0 = time.perf_counter()
    for i in range(pairs):
        body = {"products": [{"catalogProductId": PRODUCT, "countryCode": "DE"}],
                "idempotencyKey": str(uuid.uuid4())}
        r = s.post(create_url, json=body)
        if r.status_code != 200:
            sys.exit(f"peer_requests: pair {i}: create answered {r.status_code}: {r.text[:300]}")
        pid = r.json()["package"]["id"]
        r = s.get(f"{base}/resellers/v1/packages/{pid}")
        if r.status_code != 200:
            sys.exit(f"peer_requests: pair {i}: get answered {r.status_code}: {r.text[:300]}")
        if r.json()["package"]["id"] != pid:
            sys.exit(f"peer_requests: pair {i}: get returned another package")
    print(f"{time.perf_counter() - t0:.6f}")


if __name__ == "__main__":
    main()
