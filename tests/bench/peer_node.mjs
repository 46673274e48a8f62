// Benchmark peer: Node's built-in node:http with a keep-alive http.Agent (no
// npm dependency), the fastest of Node's own clients here: about 3.7x Node's
// fetch on these calls. The same calls as wix_seq.lua and wix_concurrent.lua.
//   node peer_node.mjs seq BASE_URL PAIRS       N sequential Create Package V2
//                                               + Get Package pairs (maxSockets 1)
//   node peer_node.mjs conc BASE_URL EVENTS C   E events, each a Create then a Get
//                                               of the created package; C workers
//                                               (Promise.all) each take the next
//                                               event, so exactly C are in flight;
//                                               the agent's maxSockets is C
// Prints the elapsed seconds of the work (start-up not included). Exits
// non-zero on any non-200 answer or a Get that returns another package.
import http from "node:http";
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";

const ACCOUNT = "33333333-4444-4555-8666-777777777777";
const PRODUCT = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03";

const [mode, base, nArg, cArg] = process.argv.slice(2);
if (!base || (mode !== "seq" && mode !== "conc")) {
  console.error("usage: peer_node.mjs seq BASE_URL PAIRS | conc BASE_URL EVENTS CONCURRENCY");
  process.exit(2);
}
const url = new URL(base);
const n = Number(nArg);
const c = mode === "seq" ? 1 : Number(cArg);
const agent = new http.Agent({ keepAlive: true, maxSockets: c });
const headers = {
  Authorization: process.env.WIX_API_KEY ?? "bench-key",
  "wix-account-id": ACCOUNT,
};

function fail(msg) {
  console.error(`peer_node: ${msg}`);
  process.exit(1);
}

// One call: resolves to the parsed JSON answer; fails the run on anything but 200.
function call(method, path, body) {
  return new Promise((resolve, reject) => {
    const h = body === undefined ? headers
      : { ...headers, "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) };
    const req = http.request({ host: url.hostname, port: url.port, method, path, headers: h, agent }, (res) => {
      const chunks = [];
      res.on("data", (d) => chunks.push(d));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        if (res.statusCode !== 200) return reject(new Error(`${method} ${path} answered ${res.statusCode}: ${text.slice(0, 300)}`));
        try { resolve(JSON.parse(text)); } catch (e) { reject(e); }
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

// One event: a Create Package V2, then a Get of the package it made.
async function event(i) {
  const body = JSON.stringify({
    products: [{ catalogProductId: PRODUCT, countryCode: "DE" }],
    idempotencyKey: randomUUID(),
  });
  const id = (await call("POST", "/resellers/v2/packages", body)).package.id;
  const got = (await call("GET", `/resellers/v1/packages/${id}`)).package.id;
  if (got !== id) throw new Error(`event ${i}: created ${id}, got ${got}`);
}

const t0 = performance.now();
try {
  if (mode === "seq") {
    for (let i = 0; i < n; i++) await event(i);
  } else {
    let next = 0;
    const worker = async () => {
      while (next < n) await event(next++);
    };
    await Promise.all(Array.from({ length: Math.min(c, n) }, worker));
  }
} catch (e) {
  fail(e.message);
}
console.log(((performance.now() - t0) / 1000).toFixed(6));
agent.destroy();
