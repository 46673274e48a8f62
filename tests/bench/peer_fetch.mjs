// Benchmark peer: Node's built-in fetch (undici, keep-alive) doing N sequential
// Create Package V2 + Get Package pairs, the same calls as wix_seq.lua.
//   node peer_fetch.mjs BASE_URL [PAIRS]     (PAIRS defaults to $BENCH_PAIRS, else 5000)
// Prints the elapsed seconds of the loop (start-up not included). Exits
// non-zero on any non-200 answer or a Get that returns another package.
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";

const ACCOUNT = "33333333-4444-4555-8666-777777777777";
const PRODUCT = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03";

const base = process.argv[2].replace(/\/+$/, "");
const pairs = Number(process.argv[3] ?? process.env.BENCH_PAIRS ?? 5000);
const headers = {
  Authorization: process.env.WIX_API_KEY ?? "bench-key",
  "wix-account-id": ACCOUNT,
  "Content-Type": "application/json",
};

function fail(msg) {
  console.error(`peer_fetch: ${msg}`);
  process.exit(1);
}

const t0 = performance.now();
for (let i = 0; i < pairs; i++) {
  const body = JSON.stringify({
    products: [{ catalogProductId: PRODUCT, countryCode: "DE" }],
    idempotencyKey: randomUUID(),
  });
  let r = await fetch(`${base}/resellers/v2/packages`, { method: "POST", headers, body });
  if (r.status !== 200) fail(`pair ${i}: create answered ${r.status}: ${(await r.text()).slice(0, 300)}`);
  const id = (await r.json()).package.id;
  r = await fetch(`${base}/resellers/v1/packages/${id}`, { headers });
  if (r.status !== 200) fail(`pair ${i}: get answered ${r.status}: ${(await r.text()).slice(0, 300)}`);
  if ((await r.json()).package.id !== id) fail(`pair ${i}: get returned another package`);
}
console.log(((performance.now() - t0) / 1000).toFixed(6));
