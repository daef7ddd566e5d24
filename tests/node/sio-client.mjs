// The official Socket.IO client (npm socket.io-client, from the checkout's node_modules) for the
// connection state recovery tests (tests/node_sio.py): everything it sees goes to stdout as one
// JSON object a line; a test drives it with one command a line on stdin.
//
// Usage: node tests/node/sio-client.mjs <url> '<json: io() options>'
//   e.g. {"transports": ["polling"], "auth": {"channels": ["a"]}, "reconnection": false}
// Out: {"t":"connect","id","recovered","pid","offset"}  pid/offset: the client's private _pid and
//        _lastOffset, what it will send in its next CONNECT
//      {"t":"event","name","args"}     every event (onAny), all its arguments: the offset is last
//      {"t":"disconnect","reason"} | {"t":"connect_error","message"}
//      {"t":"state","id","connected","recovered","pid","offset"} (answer to "state")
//      {"t":"ack","ref","args"} | {"t":"ack","ref","error"} (answer to "emit" with a ref)
//      {"t":"fatal","message"}
// In:  engine-close      socket.io.engine.close(): the transport is cut, as by a network loss
//      disconnect        socket.disconnect(): a deliberate disconnection (a "41" is sent)
//      connect           socket.connect()
//      forge-pid <x>     socket._pid = x (sent in the next CONNECT)
//      forge-offset <y>  socket._lastOffset = y
//      set-auth <json>   socket.auth = the object (sent in the next CONNECT)
//      emit <json>       {"event", "args", "ref"?}: socket.emit(event, ...args), with an
//                        acknowledgement callback when there is a ref
//      state             prints the state line
//      exit              closes the socket and ends the process
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const ACK_TIMEOUT_MS = 5000;
const [url, rawOptions] = process.argv.slice(2);
const options = rawOptions ? JSON.parse(rawOptions) : {};
const socket = io(url, { reconnectionDelay: 50, reconnectionDelayMax: 200, ...options });

function say(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function state() {
  return {
    id: socket.id ?? null,
    connected: socket.connected,
    // undefined (an ack without pid: recovery off) is shown as null
    recovered: socket.recovered ?? null,
    pid: socket._pid ?? null,
    offset: socket._lastOffset ?? null,
  };
}

socket.on("connect", () => {
  const { id, recovered, pid, offset } = state();
  say({ t: "connect", id, recovered, pid, offset });
});
socket.on("disconnect", (reason) => say({ t: "disconnect", reason }));
socket.on("connect_error", (err) => say({ t: "connect_error", message: err.message }));
socket.onAny((name, ...args) => say({ t: "event", name, args }));

const commands = {
  "engine-close": () => socket.io.engine.close(),
  disconnect: () => socket.disconnect(),
  connect: () => socket.connect(),
  "forge-pid": (value) => {
    socket._pid = value;
  },
  "forge-offset": (value) => {
    socket._lastOffset = value;
  },
  "set-auth": (value) => {
    socket.auth = JSON.parse(value);
  },
  state: () => say({ t: "state", ...state() }),
  emit: (value) => {
    const { event, args, ref } = JSON.parse(value);
    if (ref === undefined) {
      socket.emit(event, ...args);
      return;
    }
    socket.timeout(ACK_TIMEOUT_MS).emit(event, ...args, (err, ...answer) => {
      say(err ? { t: "ack", ref, error: err.message } : { t: "ack", ref, args: answer });
    });
  },
  exit: () => {
    socket.close();
    lines.close();
  },
};

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const space = line.indexOf(" ");
  const [name, argument] = space === -1 ? [line, undefined] : [line.slice(0, space), line.slice(space + 1)];
  try {
    const command = commands[name];
    if (command === undefined) throw new Error(`unknown command ${JSON.stringify(line)}`);
    command(argument);
  } catch (err) {
    say({ t: "fatal", message: String(err && err.stack ? err.stack : err) });
  }
});
// The test went away (stdin closed), or said exit: so does this client.
lines.on("close", () => {
  socket.close();
  setImmediate(() => process.exit(0));
});
