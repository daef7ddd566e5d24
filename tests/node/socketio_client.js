// The official Node Socket.IO client (npm socket.io-client, from the checkout's node_modules),
// driven by a test over stdin and stdout, one JSON object a line (tests/node_client.py).
//
// In:  {"op": "connect", "auth": {...}, "transports": ["websocket"]}
//      {"op": "emit", "event": "subscribe", "args": [["a"]], "ref": 1}   ref: ask for an ack
//      {"op": "close"}
// Out: {"type": "connect"} | {"type": "connect_error", "message", "data"}
//      {"type": "event", "event", "args"} | {"type": "ack", "ref", "args"} | {"type": "ack", "ref",
//      "error"} | {"type": "disconnect", "reason"} | {"type": "fatal", "message"}
"use strict";

const readline = require("node:readline");
const { io } = require("socket.io-client");

const ACK_TIMEOUT_MS = 5000;
const url = process.argv[2];
let socket = null;

function say(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function connect({ auth, transports }) {
  // No reconnection: a test sees every refusal and disconnection as it happens.
  socket = io(url, { auth, transports: transports || ["websocket"], reconnection: false });
  socket.on("connect", () => say({ type: "connect" }));
  socket.on("connect_error", (err) => {
    say({ type: "connect_error", message: err.message, data: err.data === undefined ? null : err.data });
  });
  socket.on("disconnect", (reason) => say({ type: "disconnect", reason }));
  socket.onAny((event, ...args) => say({ type: "event", event, args }));
}

function emit({ event, args, ref }) {
  if (ref === undefined) {
    socket.emit(event, ...args);
    return;
  }
  socket.timeout(ACK_TIMEOUT_MS).emit(event, ...args, (err, ...answer) => {
    say(err ? { type: "ack", ref, error: err.message } : { type: "ack", ref, args: answer });
  });
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  try {
    const command = JSON.parse(line);
    if (command.op === "connect") connect(command);
    else if (command.op === "emit") emit(command);
    else if (command.op === "close") {
      if (socket) socket.close();
      lines.close();
    } else throw new Error(`unknown op ${command.op}`);
  } catch (err) {
    say({ type: "fatal", message: String(err && err.stack ? err.stack : err) });
  }
});
// The test went away (stdin closed): so does this client.
lines.on("close", () => {
  if (socket) socket.close();
  setImmediate(() => process.exit(0));
});
