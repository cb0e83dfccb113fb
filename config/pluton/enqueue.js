#!/usr/bin/env node
// Enqueue a boxd job over its Unix socket with Node's own http module (no dependencies).
//
//   node enqueue.js SOURCE DESTINATION [copy|mirror]
//
// SOURCE is an absolute path under boxd's daemon.allowed_sources, DESTINATION a Box folder path
// under box.root_folder_id. The socket is $BOXD_SOCKET or /run/boxd/boxd.sock. Prints boxd's
// answer (the job object, or {"error": {...}}) and exits 0 when the job was queued (202) or
// already existed (200, same idempotency_key), 1 when boxd refused it, 2 when boxd is unreachable,
// 64 on wrong arguments.
// A Node backup manager such as Pluton can call the same request from its onBackupComplete code.
"use strict";

const http = require("node:http");
const path = require("node:path");

const [source, destination, mode = "mirror"] = process.argv.slice(2);
if (!source || !destination) {
  console.error("usage: node enqueue.js SOURCE DESTINATION [copy|mirror]");
  process.exit(64);
}

const job = {
  source: path.resolve(source),
  destination,
  mode,
  // Same key, same job: a repeated call returns the job already queued instead of a new one.
  idempotency_key: process.env.BOXD_IDEMPOTENCY_KEY || `node-${Date.now()}`,
};
const body = JSON.stringify(job);

const req = http.request(
  {
    socketPath: process.env.BOXD_SOCKET || "/run/boxd/boxd.sock",
    path: "/v1/jobs",
    method: "POST",
    headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) },
    timeout: 30_000,
  },
  (res) => {
    let data = "";
    res.setEncoding("utf8");
    res.on("data", (chunk) => (data += chunk));
    res.on("end", () => {
      console.log(data);
      if (res.statusCode === 202 || res.statusCode === 200) {
        const answer = JSON.parse(data);
        console.error(`job ${answer.id} is ${answer.state} (HTTP ${res.statusCode})`);
      } else {
        console.error(`boxd refused the job (HTTP ${res.statusCode})`);
        process.exitCode = 1;
      }
    });
  },
);
req.on("timeout", () => req.destroy(new Error("no answer from boxd within 30 s")));
req.on("error", (err) => {
  console.error(`cannot reach boxd: ${err.message}`);
  process.exitCode = 2;
});
req.end(body);
