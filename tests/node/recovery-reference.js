// The reference for tests/test_recovery_reference.py: socket.io's own server (4.8, from the
// benchmark's Node peer install, on NODE_PATH) with connectionStateRecovery, behind the few
// routes of ours that the recovery tests use, so the same test code runs against both and
// proves that what it expects is what the official stack does.
//
// Env: PORT (0: any; the port is printed as {"port": N}), MAX_DISCONNECTION_MS (default 120000),
// PING_INTERVAL_MS, PING_TIMEOUT_MS (Engine.IO's, defaults 25000 and 20000).
// Routes: POST /publish {event, data, channel?} -> 202 {id} (id: the offset the event got);
//         GET /healthz; GET /stats {user_count, channels: {name: n}};
//         GET /metrics: broadcast_socketio_recovery_sessions (sessions kept, not yet expired).
// Clients join the rooms named in auth.channels.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const window = Number(process.env.MAX_DISCONNECTION_MS || 120000);

function reply(res, status, body, type = "application/json") {
  res.writeHead(status, { "content-type": type });
  res.end(type === "application/json" ? JSON.stringify(body) : body);
}

const server = http.createServer((req, res) => {
  const adapter = io.of("/").adapter;
  if (req.method === "GET" && req.url === "/healthz") return reply(res, 200, { status: "ok" });
  if (req.method === "GET" && req.url === "/stats") {
    const channels = {};
    for (const [room, sids] of adapter.rooms) if (!adapter.sids.has(room)) channels[room] = sids.size;
    return reply(res, 200, { user_count: io.of("/").sockets.size, channels });
  }
  if (req.method === "GET" && req.url === "/metrics") {
    const now = Date.now();
    const kept = [...adapter.sessions.values()].filter((s) => s.disconnectedAt + window > now);
    return reply(res, 200, `broadcast_socketio_recovery_sessions ${kept.length}\n`, "text/plain");
  }
  if (req.method === "POST" && req.url === "/publish") {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const { event, data, channel } = JSON.parse(body);
      (channel === undefined ? io : io.to(channel)).emit(event, data);
      // The adapter appended the offset to the packet it kept: the event's id.
      reply(res, 202, { id: adapter.packets[adapter.packets.length - 1].id });
    });
    return undefined;
  }
  return reply(res, 404, { error: "not found" });
});

const io = new Server(server, {
  connectionStateRecovery: { maxDisconnectionDuration: window },
  pingInterval: Number(process.env.PING_INTERVAL_MS || 25000),
  pingTimeout: Number(process.env.PING_TIMEOUT_MS || 20000),
  serveClient: false,
});
io.on("connection", (socket) => {
  if (!socket.recovered) socket.join(socket.handshake.auth.channels || []);
});

server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
