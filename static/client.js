// The broadcast page: live user count, joins and leaves, and a chat.
// Socket.IO first; Server-Sent Events when Socket.IO cannot load or connect (or ?transport=sse),
// which keeps the count and the feeds live but makes the chat read-only (SSE only receives).
// Everything that comes from the network is shown with textContent, never parsed as HTML.
"use strict";

(() => {
  const CONNECT_DEADLINE_MS = 3000; // how long Socket.IO may take to connect before we use SSE
  const ACK_TIMEOUT_MS = 5000;
  const SSE_RETRY_MS = 3000; // once EventSource gave up (it retries network errors by itself)
  const MAX_ITEMS = 200; // a page left open for days stays light
  const NAME = /^[\p{L}\p{N} _.\-]{1,32}$/u;
  const STORAGE_KEY = "broadcast.username";

  const $ = (id) => document.getElementById(id);
  const ui = {
    count: $("count"), state: $("state"), transport: $("transport"), error: $("error"),
    events: $("events"), messages: $("messages"), whoami: $("whoami"),
    chatForm: $("chat-form"), chatInput: $("chat-input"), chatSend: $("chat-send"),
    chatNote: $("chat-note"), nameForm: $("name-form"), nameInput: $("name-input"),
  };
  const params = new URLSearchParams(location.search);
  let username = initialName(); // "" is anonymous
  let useSse = params.get("transport") === "sse" || typeof io === "undefined";
  let connection = null; // the live transport: {close(), send(text, done) | null}
  // The id of the last event received: every reconnection (either transport) resumes after it,
  // so the server replays what this page missed while it was away.
  let lastEventId = "";

  // ------------------------------------------------------------------ name

  // A ?username= in the address wins (links and tests), else the name this browser last set.
  function initialName() {
    if (params.has("username")) return params.get("username").trim();
    try { return localStorage.getItem(STORAGE_KEY) || ""; } catch { return ""; }
  }

  function rememberName(name) {
    try {
      if (name) localStorage.setItem(STORAGE_KEY, name); else localStorage.removeItem(STORAGE_KEY);
    } catch { /* storage disabled: the name lasts for this page only */ }
    // Keep the address in step, or a reload would bring back an old ?username=.
    if (name) params.set("username", name); else params.delete("username");
    const query = params.toString();
    history.replaceState(null, "", query ? `?${query}` : location.pathname);
  }

  // ------------------------------------------------------------------ rendering

  function showCount(n) {
    ui.count.textContent = n === 1 ? "1 user online" : `${n} users online`;
  }

  // The data-* attributes carry the same values, for styles and tests to select on.
  function showState(state) { ui.state.textContent = ui.state.dataset.state = state; }
  function showTransport(name) { ui.transport.textContent = ui.transport.dataset.transport = name; }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = !message;
  }

  function append(list, text) {
    const item = document.createElement("li");
    item.textContent = text;
    list.append(item);
    while (list.children.length > MAX_ITEMS) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  function onUser({ username: who, currentUsers, connected }) {
    append(ui.events, `${who} ${connected ? "joined" : "left"} (${currentUsers} online)`);
  }

  function onChat({ username: who, message }) {
    append(ui.messages, `${who}: ${message}`);
  }

  // The server could not replay everything missed while away (too long, or it restarted).
  function onGap() {
    append(ui.events, "Some events were missed while disconnected.");
  }

  function rememberId(id) {
    if (typeof id === "string" && id) lastEventId = id;
  }

  // Who we are, and whether (and why not) this page can chat.
  function showIdentity() {
    ui.whoami.textContent = username ? `You are ${username}.` : "You are anonymous.";
    const readOnly = connection !== null && connection.send === null;
    ui.chatInput.disabled = ui.chatSend.disabled = readOnly;
    ui.chatNote.textContent = readOnly ? "Chat is read-only over SSE."
      : username ? "" : "Choose a name to chat.";
    ui.chatNote.hidden = !ui.chatNote.textContent;
  }

  // ------------------------------------------------------------------ connections

  function connect() {
    if (connection) connection.close();
    showState("connecting");
    connection = useSse ? connectSse() : connectSocketIo();
    showIdentity();
  }

  function connectSocketIo() {
    const choice = params.get("transport");
    const transports = choice === "websocket" || choice === "polling" ? [choice]
      : ["polling", "websocket"]; // start on polling, upgrade to websocket when it works
    // auth as a function: the client calls it on every (re)connection, with the latest id.
    // Passing lastEventId (even "") also asks the server for ids: each event's last argument.
    const auth = (send) => send(username ? { username, lastEventId } : { lastEventId });
    const socket = io({ auth, transports, forceNew: true });
    let everConnected = false;
    // A proxy that swallows the handshake shows no error at all: give up on Socket.IO in time.
    const deadline = setTimeout(() => fallBackToSse("Socket.IO did not connect"),
      CONNECT_DEADLINE_MS);

    socket.io.on("open", () => {
      const engine = socket.io.engine; // a new engine on every reconnection
      showTransport(engine.transport.name);
      engine.on("upgrade", (transport) => showTransport(transport.name));
    });
    socket.io.on("reconnect_attempt", () => showState("reconnecting"));
    socket.on("connect", () => {
      everConnected = true;
      clearTimeout(deadline);
      showState("live");
    });
    socket.on("connect_error", (err) => {
      // The server refused us (it will not be retried), rather than the network failing.
      if (!socket.active || err.data !== undefined || /name/i.test(err.message)) {
        clearTimeout(deadline);
        refused(err.message || "the server refused the connection");
      } else if (!everConnected) {
        fallBackToSse(`Socket.IO failed: ${err.message}`);
      } else {
        showState("reconnecting");
      }
    });
    socket.on("disconnect", (reason) => {
      showState("reconnecting");
      // Only a disconnection by the server is not retried by the client itself.
      if (reason === "io server disconnect") socket.connect();
    });
    socket.onAny((event, ...args) => { if (args.length > 1) rememberId(args[args.length - 1]); });
    socket.on("user count", showCount);
    socket.on("user", onUser);
    socket.on("chat message", onChat);
    socket.on("gap", onGap);
    socket.on("error", (data) => showError((data && data.error) || "the server reported an error"));

    return {
      close() {
        clearTimeout(deadline);
        socket.off();
        socket.io.off();
        socket.disconnect();
      },
      send(text, done) {
        socket.timeout(ACK_TIMEOUT_MS).emit("chat message", text, (err, ack) => {
          if (err) done("The message was not delivered (no answer from the server).");
          else done(ack && ack.ok ? null : (ack && ack.error) || "The message was refused.");
        });
      },
    };
  }

  function fallBackToSse(why) {
    if (useSse) return;
    console.info(`${why}; falling back to Server-Sent Events`);
    useSse = true;
    connect();
  }

  // A refused name: say why, and stay connected anonymously (counted, not announced).
  function refused(message) {
    showError(username ? `Name refused: ${message}` : `Connection refused: ${message}`);
    if (!username) {
      showState("reconnecting");
      return;
    }
    username = "";
    connect();
    ui.nameInput.focus();
  }

  function connectSse() {
    // EventSource sends Last-Event-ID by itself when it reconnects; a new EventSource (after a
    // fallback or a failure) passes the last id in the address instead.
    const query = new URLSearchParams();
    if (username) query.set("username", username);
    if (lastEventId) query.set("lastEventId", lastEventId);
    const url = query.toString() ? `/events?${query}` : "/events";
    const source = new EventSource(url);
    let retry = null;
    const handle = {
      close() { clearTimeout(retry); source.close(); },
      send: null, // SSE only receives
    };
    showTransport("SSE");

    source.addEventListener("open", () => showState("live"));
    source.addEventListener("error", () => {
      showState("reconnecting");
      // EventSource retries network errors by itself but gives up on an HTTP error (a 400 for
      // a refused name, a 5xx) without saying why: ask the server once, then try again later.
      if (source.readyState === EventSource.CLOSED) {
        explainSseFailure(url).then((problem) => {
          if (connection !== handle) return; // replaced meanwhile (a new name)
          if (problem && problem.status === 400 && username) return refused(problem.error);
          if (problem) showError(`Live updates failed: ${problem.error}`);
          retry = setTimeout(connect, SSE_RETRY_MS);
        });
      }
    });
    source.addEventListener("user count", (e) => showCount(JSON.parse(e.data)));
    source.addEventListener("user", (e) => { rememberId(e.lastEventId); onUser(JSON.parse(e.data)); });
    source.addEventListener("chat message", (e) => {
      rememberId(e.lastEventId);
      onChat(JSON.parse(e.data));
    });
    source.addEventListener("gap", onGap);
    return handle;
  }

  async function explainSseFailure(url) {
    const abort = new AbortController();
    try {
      const response = await fetch(url, { signal: abort.signal });
      if (response.ok) return null; // it works now (a stream): the retry will do
      const body = await response.json().catch(() => ({}));
      return { status: response.status, error: body.error || body.detail || response.statusText };
    } catch {
      return { status: 0, error: "the server cannot be reached" };
    } finally {
      abort.abort(); // never keep a stream open here
    }
  }

  // ------------------------------------------------------------------ forms

  ui.chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.chatInput.value;
    if (!text.trim() || !connection || !connection.send) return;
    if (!username) {
      showError("Choose a name to chat.");
      ui.nameInput.focus();
      return;
    }
    ui.chatSend.disabled = true;
    connection.send(text, (error) => {
      showIdentity(); // re-enables the button unless the chat became read-only meanwhile
      showError(error || "");
      if (!error) ui.chatInput.value = ""; // on failure the text stays, to send again
      ui.chatInput.focus();
    });
  });

  ui.nameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.nameInput.value.trim();
    if (name && !NAME.test(name)) {
      showError("A name is 1–32 letters, digits, spaces, underscores, dots or hyphens.");
      return;
    }
    showError("");
    if (name === username) return;
    username = name;
    rememberName(name);
    connect(); // the server learns a name when a client connects
  });

  ui.nameInput.value = username;
  connect();
})();
