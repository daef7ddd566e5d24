// The broadcast page: live user count, joins and leaves, and a chat; in a room (?channel=, or the
// room field), also that room's count, joins and leaves, and chat.
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
    chatTo: $("chat-to"), chatToRoom: $("chat-to-room"), roomCount: $("room-count"),
    roomForm: $("room-form"), roomInput: $("room-input"), roomJoin: $("room-join"),
  };
  const params = new URLSearchParams(location.search);
  let username = initialName(); // "" is anonymous
  let useSse = params.get("transport") === "sse" || typeof io === "undefined";
  // The live transport: {close(), send(text, channel, done) | null, changeRoom(next, done) | null}
  let connection = null;
  // The id of the last event received: every reconnection (either transport) resumes after it,
  // so the server replays what this page missed while it was away.
  let lastEventId = "";
  // The room (a channel of the server) this page is in; "" for none: the page is then exactly
  // the classic one (plain-string chat to everyone, no channel at all).
  let room = params.get("channel") || "";
  // The room being entered (its subscription not yet acknowledged): its count and its joins
  // may arrive before the acknowledgement.
  let entering = "";
  const roomCounts = new Map(); // the last `channel count` of each channel, by name

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
    updateAddress();
  }

  function updateAddress() {
    const query = params.toString();
    history.replaceState(null, "", query ? `?${query}` : location.pathname);
  }

  // ------------------------------------------------------------------ room

  // The address keeps ?channel= in step, so a reload (or a shared link) comes back to the room.
  function setRoom(name) {
    if (room && room !== name) roomCounts.delete(room);
    room = name;
    if (name) params.set("channel", name); else params.delete("channel");
    updateAddress();
    showRoom();
  }

  // Events of a channel are shown only for this page's room (or the one it is entering): those
  // of a room just left may still be on their way.
  function inRoom(channel) {
    return typeof channel === "string" && channel !== ""
      && (channel === room || channel === entering);
  }

  // ------------------------------------------------------------------ rendering

  function showCount(n) {
    ui.count.textContent = n === 1 ? "1 user online" : `${n} users online`;
  }

  // The data-* attributes carry the same values, for styles and tests to select on.
  function showState(state) { ui.state.textContent = ui.state.dataset.state = state; }
  function showTransport(name) { ui.transport.textContent = ui.transport.dataset.transport = name; }

  function showRoom() {
    const count = roomCounts.get(room);
    ui.roomCount.hidden = !room;
    ui.roomCount.textContent = !room ? ""
      : count === undefined ? `… in ${room}` : `${count} in ${room}`;
    ui.chatTo.hidden = !room;
    ui.chatToRoom.textContent = room;
    if (!room) ui.chatTo.value = "room"; // the next room starts on its own chat again
    ui.chatInput.placeholder = room && ui.chatTo.value === "room" ? `Say something in ${room}…`
      : "Say something…";
  }

  function onChannelCount({ channel, count }) {
    if (!inRoom(channel)) return; // a room just left: its count no longer matters here
    roomCounts.set(channel, count);
    if (channel === room) showRoom();
  }

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

  // A `user` event with a channel is a join or leave of that channel; without, of the server.
  function onUser({ username: who, currentUsers, connected, channel, count }) {
    const verb = connected ? "joined" : "left";
    if (channel === undefined) append(ui.events, `${who} ${verb} (${currentUsers} online)`);
    else if (inRoom(channel)) {
      append(ui.events, `${who} ${verb} ${channel} (${count} in ${channel})`);
    }
  }

  function onChat({ username: who, message, channel }) {
    if (channel === undefined) append(ui.messages, `${who}: ${message}`);
    else if (inRoom(channel)) append(ui.messages, `[${channel}] ${who}: ${message}`);
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
    // The room rides along (as auth.channels) on every connection too, so a reconnection comes
    // back in the room the page is in by then.
    const auth = (send) => {
      const data = username ? { username, lastEventId } : { lastEventId };
      if (room) data.channels = [room];
      send(data);
    };
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
      // Socket.IO's own connection state recovery (BROADCAST_SOCKETIO_RECOVERY): whether this
      // connection took up the last one's session, for whoever inspects the page.
      document.documentElement.dataset.recovered = String(socket.recovered);
      clearTimeout(deadline);
      showState("live");
    });
    socket.on("connect_error", (err) => {
      // The server refused us (it will not be retried), rather than the network failing.
      if (!socket.active || err.data !== undefined || /name/i.test(err.message)) {
        clearTimeout(deadline);
        const message = err.message || "the server refused the connection";
        // The server checks the name first: a refusal that speaks of channels is the room's.
        if (room && /channel/i.test(message)) roomRefused(message);
        else refused(message);
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
    socket.on("channel count", onChannelCount);
    socket.on("user", onUser);
    socket.on("chat message", onChat);
    socket.on("gap", onGap);
    socket.on("error", (data) => showError((data && data.error) || "the server reported an error"));

    const handle = {
      close() {
        clearTimeout(deadline);
        socket.off();
        socket.io.off();
        socket.disconnect();
      },
      // To a channel as {channel, message}; to everyone as the plain string, as ever.
      send(text, channel, done) {
        const message = channel ? { channel, message: text } : text;
        socket.timeout(ACK_TIMEOUT_MS).emit("chat message", message, (err, ack) => {
          if (err) done("The message was not delivered (no answer from the server).");
          else done(ack && ack.ok ? null : (ack && ack.error) || "The message was refused.");
        });
      },
      // Enter `next` ("": no room) while connected: subscribe to it first, and leave the old
      // room only once the server accepted the new one, so a refused name keeps the page where
      // it was. While disconnected there is nothing to ask: the reconnection's auth carries it.
      changeRoom(next, done) {
        const old = room;
        const leaveOld = () => {
          if (old && old !== room) {
            socket.timeout(ACK_TIMEOUT_MS).emit("unsubscribe", [old], (err, ack) => {
              if (err || !ack || !ack.ok) console.info(`leaving ${old}:`, err || ack);
            });
          }
          done(null);
        };
        if (!socket.connected) {
          setRoom(next);
          return done(null);
        }
        if (!next) {
          setRoom("");
          return leaveOld();
        }
        entering = next;
        socket.timeout(ACK_TIMEOUT_MS).emit("subscribe", [next], (err, ack) => {
          if (entering === next) entering = "";
          if (connection !== handle) return; // replaced meanwhile (a new name, a fallback)
          if (err) return done("The room could not be entered (no answer from the server).");
          if (!ack || !ack.ok) {
            return done(`Room refused: ${(ack && ack.error) || "no reason given"}`);
          }
          setRoom(next);
          leaveOld();
        });
      },
    };
    return handle;
  }

  function fallBackToSse(why) {
    if (useSse) return;
    console.info(`${why}; falling back to Server-Sent Events`);
    useSse = true;
    connect();
  }

  // A refused room (at connect: ?channel=, or a reconnection): say why, and go on without it.
  function roomRefused(message) {
    showError(`Room refused: ${message}`);
    setRoom("");
    connect();
    ui.roomInput.focus();
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
    if (room) query.set("channel", room); // for the stream's life: a new room is a new stream
    const url = query.toString() ? `/events?${query}` : "/events";
    const source = new EventSource(url);
    let retry = null;
    const handle = {
      close() { clearTimeout(retry); source.close(); },
      send: null, // SSE only receives
      changeRoom: null, // a stream's channels are fixed: a new room needs a new stream
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
          // The server checks the name first: a refusal that speaks of channels is the room's.
          if (problem && problem.status >= 400 && problem.status < 500 && room
              && /channel/i.test(problem.error)) return roomRefused(problem.error);
          if (problem && problem.status === 400 && username) return refused(problem.error);
          if (problem) showError(`Live updates failed: ${problem.error}`);
          retry = setTimeout(connect, SSE_RETRY_MS);
        });
      }
    });
    source.addEventListener("user count", (e) => showCount(JSON.parse(e.data)));
    source.addEventListener("channel count", (e) => onChannelCount(JSON.parse(e.data)));
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
    const channel = room && ui.chatTo.value === "room" ? room : null;
    connection.send(text, channel, (error) => {
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

  ui.roomForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = ui.roomInput.value.trim();
    ui.roomInput.value = next;
    if (next === room) return;
    showError("");
    if (!connection || !connection.changeRoom) { // SSE: a new stream, with the new room
      setRoom(next);
      connect();
      return;
    }
    ui.roomJoin.disabled = true;
    connection.changeRoom(next, (error) => {
      ui.roomJoin.disabled = false;
      if (error) showError(error);
    });
  });

  ui.chatTo.addEventListener("change", showRoom);

  ui.nameInput.value = username;
  ui.roomInput.value = room;
  showRoom();
  connect();
})();
