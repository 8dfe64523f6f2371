// A real @grpc/grpc-js-xds client: unary calls over an xds:/// target.
//
// Usage: node xds_client.js TARGET METHOD COUNT TIMEOUT_MS
// The xDS bootstrap comes from GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG.
// Prints one JSON line {"ok": n, "replies": [...]} when every call succeeded, then keeps its
// xDS stream open until stdin closes (so the test can wait for its last ACKs) and exits 0;
// exits 1 at once when a call fails (error on stderr).  Every call has a deadline, and so
// does the process.
'use strict';

const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');

const [target, method, countText, timeoutText] = process.argv.slice(2);
const count = Number(countText || 1);
const timeoutMs = Number(timeoutText || 20000);
if (!target || !method || !(count > 0 && count <= 1000) || !(timeoutMs > 0)) {
  console.error('usage: node xds_client.js TARGET METHOD COUNT(1-1000) TIMEOUT_MS');
  process.exit(2);
}

xds.register();
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const identity = (b) => b;
const stopAll = setTimeout(() => {
  console.error(`timed out after ${timeoutMs} ms`);
  process.exit(1);
}, 2 * timeoutMs + 1000);

function call(i) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client.makeUnaryRequest(method, identity, identity, Buffer.from(`node-${i}`),
      new grpc.Metadata({ waitForReady: true }), { deadline },
      (err, reply) => (err ? reject(err) : resolve(reply.toString())));
  });
}

(async () => {
  const replies = [];
  try {
    for (let i = 0; i < count; i++) {
      replies.push(await call(i));
    }
  } catch (err) {
    console.error(`call failed: ${err.code} ${err.details || err.message}`);
    process.exit(1);
  }
  console.log(JSON.stringify({ ok: replies.length, replies }));
  const done = () => {
    clearTimeout(stopAll);
    client.close();
    process.exit(0);
  };
  process.stdin.on('end', done);
  process.stdin.on('close', done);
  process.stdin.resume();
})();
