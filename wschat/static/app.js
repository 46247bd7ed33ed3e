// wschat browser client: plain JavaScript and the native WebSocket API (protocol: docs/protocol.md).
//
// Rules this file keeps:
// - every user-provided string reaches the page through textContent or an attribute, never innerHTML;
// - a message is shown once per (room, id), in id order, whatever mix of history, live messages,
//   acks and reconnects delivers it;
// - nothing typed is silently lost: a message waits in the room's outbox (shown as pending) until the
//   server acks it, is resent after a reconnect with the same `ref` (the server dedupes by ref), and
//   is marked "not sent" when the server refuses it;
// - a signed-in page (protocol.md, "Signed identities") sends its token only inside the WebSocket,
//   gets it from the application's --client-token-url or the URL fragment #token=…, and refreshes
//   it before it expires.
'use strict';

(() => {
  const SUBPROTOCOL = 'wschat.v1';
  const NAME_STORAGE_KEY = 'wschat.name';
  const DEFAULT_ROOM = 'lobby';
  const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  // protocol.md: no control (Cc), format (Cf) or surrogate (Cs) characters in a name.
  const NAME_BAD_CHAR_RE = /[\p{Cc}\p{Cf}\p{Cs}]/u;
  const MAX_NAME_CHARS = 32;
  const MAX_TEXT_CHARS = 2000;
  // Reconnect delay: exponential backoff with "equal jitter" (half fixed, half random), so a crowd
  // of clients dropped by one server restart does not come back in lockstep.
  const BACKOFF_BASE_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  const RATE_LIMIT_RETRY_MS = 1200;
  const RATE_LIMIT_MAX_RETRIES = 5;
  // `unavailable`: the server's shared store (Redis) is down; nothing was stored, try again.
  const UNAVAILABLE_RETRY_MS = 2000;
  // Closer than this to the bottom counts as "reading the newest messages": keep following.
  const STICKY_BOTTOM_PX = 48;
  // Close codes (docs/protocol.md): 4001 and CLOSE_STAY_AWAY mean the server would refuse this
  // page again the same way, so reconnecting would only repeat it; CLOSE_COME_BACK_SOON means
  // the server is restarting or busy: reconnect within a few seconds, at a random moment, so that
  // the clients of a drained server do not all return at once. Anything else is a failure:
  // reconnect with backoff.
  const CLOSE_REPLACED = 4001;
  const CLOSE_STAY_AWAY = new Map([
    [1002, 'protocol error'],
    [1003, 'data the server does not accept'],
    [1007, 'invalid text'],
    [1008, 'policy violation'],
    [1009, 'message too large'],
  ]);
  const CLOSE_COME_BACK_SOON = new Set([1001, 1012, 1013]);
  const SOON_MIN_MS = 1000;
  const SOON_JITTER_MS = 4000;
  const CLOSE_UNAUTHORIZED = 4401;
  const CLOSE_DISCONNECTED = 4403;
  const CLOSE_TOKEN_EXPIRED = 4440;
  // Fetch a new token this long before the current one expires (or at 4/5 of a shorter life);
  // one with less than TOKEN_MIN_LEFT_MS to go (by our clock) is not worth signing in with.
  const REFRESH_BEFORE_MS = 60000;
  const REFRESH_RETRY_MS = 10000;
  const TOKEN_MIN_LEFT_MS = 2000;
  const WHO_PAGE = 200; // names per page of the member panel in a big room
  const WHO_MAX_LIMIT = 1000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'),
    reconnectNow: $('reconnect-now'),
    me: $('me'),
    meName: $('me-name'),
    tabs: $('rooms'),
    roomForm: $('room-form'),
    roomInput: $('room-input'),
    messages: $('messages'),
    empty: $('empty'),
    jump: $('jump'),
    people: $('people'),
    users: $('users'),
    userCount: $('user-count'),
    usersNote: $('users-note'),
    usersMore: $('users-more'),
    composer: $('composer'),
    input: $('input'),
    error: $('error'),
    nameDialog: $('name-dialog'),
    nameForm: $('name-form'),
    nameInput: $('name-input'),
    nameError: $('name-error'),
  };

  const state = {
    name: loadName(),
    token: null, // from the last welcome: lets a reconnect take our name over (protocol.md, join)
    ws: null,
    conn: 'connecting', // connecting | online | reconnecting | offline
    attempt: 0,
    retryTimer: 0,
    retryAt: 0,
    countdownTimer: 0,
    stayAway: false, // the server closed us with a code that says not to reconnect by ourselves
    rooms: new Map(), // room name -> Room, in tab order
    active: null,
    // Joins and leaves carry no ref, so an error with ref null answers the oldest of them: the
    // server answers one connection's requests in order.
    awaiting: [],
    // The name the server gave this connection (welcome, authed): a guest's ends in " (guest)".
    self: '',
    auth: {
      mode: 'off', // off | optional | required: from /config.json
      tokenUrl: null, // the application's endpoint for a token, fetched with its cookies
      jwt: null, // the token to sign in with (never put in a URL: protocol.md)
      signed: null, // {name, user, admin} once authed
      signing: false, // the connection's auth is on its way
      retried: false, // one fresh token after a refusal, then give up
      refreshTimer: 0,
    },
  };

  // ---------------------------------------------------------------------------------------------
  // Small helpers

  function loadName() {
    try {
      return localStorage.getItem(NAME_STORAGE_KEY) || '';
    } catch {
      return ''; // storage disabled: ask every time
    }
  }

  function saveName(name) {
    try {
      localStorage.setItem(NAME_STORAGE_KEY, name);
    } catch {
      // storage disabled: the name lasts for this page only
    }
  }

  function charCount(text) {
    return [...text].length; // code points, as the server counts them
  }

  function nameProblem(name) {
    if (!name) return 'Please enter a name.';
    if (charCount(name) > MAX_NAME_CHARS) return `At most ${MAX_NAME_CHARS} characters.`;
    if (name !== name.trim()) return 'No spaces at the start or end.';
    if (NAME_BAD_CHAR_RE.test(name)) return 'Only printable characters, please.';
    return '';
  }

  function newRef() {
    // randomUUID exists only in secure contexts (https, localhost); plain http on a LAN address
    // still has getRandomValues.
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    if (window.crypto && typeof crypto.getRandomValues === 'function') {
      crypto.getRandomValues(bytes);
    } else {
      for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });

  function setTime(timeEl, ts) {
    const date = new Date(ts);
    if (Number.isNaN(date.getTime())) {
      timeEl.textContent = '';
      return;
    }
    timeEl.dateTime = date.toISOString();
    timeEl.textContent = timeFormat.format(date);
    timeEl.title = fullFormat.format(date);
  }

  function me() {
    return state.self || state.name;
  }

  // ---------------------------------------------------------------------------------------------
  // Signing in

  function takeFragmentToken() {
    // "#token=…": a link the application made for this user. Read it and take it out of the URL
    // (and so out of the history) at once.
    if (!location.hash.startsWith('#token=')) return null;
    let token = location.hash.slice('#token='.length);
    try {
      token = decodeURIComponent(token);
    } catch {
      // keep it as it is
    }
    history.replaceState(null, '', location.pathname + location.search);
    return token || null;
  }

  function tokenExpiresAt(jwt) {
    // The payload's exp, to know when to get a new token; the server is the one that verifies.
    try {
      const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const claims = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
      return Number.isFinite(claims.exp) ? claims.exp * 1000 : 0;
    } catch {
      return 0;
    }
  }

  function signedMode() {
    return state.auth.mode !== 'off' && (state.auth.jwt !== null || state.auth.tokenUrl !== null);
  }

  function tokenUsable() {
    const jwt = state.auth.jwt;
    return jwt !== null && tokenExpiresAt(jwt) - Date.now() > TOKEN_MIN_LEFT_MS;
  }

  async function fetchToken() {
    if (!state.auth.tokenUrl) return null;
    try {
      const response = await fetch(state.auth.tokenUrl, {
        credentials: 'include',
        cache: 'no-store',
        headers: { accept: 'application/json' },
      });
      if (!response.ok) return null;
      const body = await response.json();
      return body && typeof body.token === 'string' && body.token ? body.token : null;
    } catch {
      return null;
    }
  }

  async function loadConfig() {
    try {
      const response = await fetch('config.json', { cache: 'no-store' });
      if (!response.ok) return;
      const config = await response.json();
      if (['off', 'optional', 'required'].includes(config.auth)) state.auth.mode = config.auth;
      if (typeof config.token_url === 'string' && config.token_url) state.auth.tokenUrl = config.token_url;
    } catch {
      // an older server without /config.json: the open chat
    }
  }

  function noToken() {
    // The application gave no token (not signed in there). With --auth optional, chat as a guest.
    state.auth.jwt = null;
    if (state.auth.mode === 'optional' && !state.auth.signed) {
      state.auth.tokenUrl = null;
      if (state.name && !nameProblem(state.name)) {
        connect();
      } else {
        setConn('offline', 'offline: choose a name');
        askName('');
      }
      return;
    }
    setConn('offline', 'offline: sign in to the application to chat');
  }

  function onAuthed(frame) {
    const first = state.auth.signing;
    state.auth.signing = false;
    state.auth.retried = false;
    state.auth.signed = { name: frame.name, user: frame.user, admin: frame.admin === true };
    state.self = frame.name;
    state.name = frame.name;
    renderMe();
    scheduleRefresh(Number.isFinite(frame.expires_in) ? frame.expires_in * 1000 : 0);
    if (!first) return; // the answer to a refresh
    for (const room of state.rooms.values()) sendJoin(room);
    if (state.rooms.size === 0) setConn('online');
  }

  function scheduleRefresh(expiresInMs) {
    clearTimeout(state.auth.refreshTimer);
    state.auth.refreshTimer = 0;
    if (!state.auth.tokenUrl || expiresInMs <= 0) return;
    const delay = Math.max(1000, expiresInMs - Math.min(REFRESH_BEFORE_MS, expiresInMs / 5));
    state.auth.refreshTimer = setTimeout(refreshToken, delay);
  }

  async function refreshToken() {
    state.auth.refreshTimer = 0;
    const jwt = await fetchToken();
    if (jwt !== null && jwt !== state.auth.jwt) {
      state.auth.jwt = jwt;
      if (send({ type: 'refresh', token: jwt })) return;
    }
    // No new token yet (the application is down, or gave the same one): try again soon; the
    // server allows a grace period after exp.
    if (isOpen()) state.auth.refreshTimer = setTimeout(refreshToken, REFRESH_RETRY_MS);
  }

  // ---------------------------------------------------------------------------------------------
  // Rooms

  function makeRoom(name) {
    return {
      name,
      messages: [], // sorted by id
      byId: new Map(),
      lastId: null, // the highest id seen: `since` when rejoining
      epoch: null, // which history lastId counts in (servers on Redis send it)
      welcomed: false,
      joinState: 'idle', // idle | joining | joined | error
      // The member list while the server sends it (rooms up to its member-list limit); null
      // in a bigger room, where `count` is kept and the panel pages through `who` (paged).
      users: new Set(),
      count: 0,
      paged: [],
      next: null, // the `after` of the next page; null when every page is loaded
      pagedAll: false,
      paging: false, // a page was asked for and has not come yet
      listing: false, // re-reading the whole list with `who` (the room came under the limit)
      outbox: [], // {ref, text, state: queued|sending|failed, error, retries, node}
      unread: 0,
      scrollTop: null, // remembered while another tab is shown; null = follow the bottom
    };
  }

  function activeRoom() {
    return state.active ? state.rooms.get(state.active) || null : null;
  }

  function openRoom(name, { focus = false } = {}) {
    if (!ROOM_RE.test(name)) {
      showError(`"${name}" is not a room name: use 1–64 letters, digits, _, - or .`);
      return false;
    }
    if (!state.rooms.has(name)) {
      const room = makeRoom(name);
      state.rooms.set(name, room);
      if (isOpen()) sendJoin(room);
    }
    setActive(name);
    if (focus) ui.input.focus();
    return true;
  }

  function closeRoom(name) {
    const room = state.rooms.get(name);
    if (!room) return;
    if (room.outbox.some((item) => item.state !== 'failed')) {
      showError(`Messages to #${name} are still being sent.`);
      return;
    }
    if (room.joinState === 'joined' && send({ type: 'leave', room: name })) {
      state.awaiting.push({ kind: 'leave', room: name });
    }
    state.rooms.delete(name);
    if (state.active === name) {
      const next = state.rooms.keys().next();
      state.active = null;
      if (!next.done) setActive(next.value);
      else renderAll();
    } else {
      renderTabs();
    }
  }

  function setActive(name) {
    const previous = activeRoom();
    if (previous && previous.name !== name) {
      previous.scrollTop = nearBottom() ? null : ui.messages.scrollTop;
    }
    state.active = name;
    const room = activeRoom();
    room.unread = 0;
    if (room.joinState === 'error' && isOpen()) sendJoin(room); // try again, e.g. after room_full
    if (room.users === null && ui.people.open && !room.paged.length) requestPage(room);
    const hash = `#/${name}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
    renderAll();
  }

  function roomFromUrl() {
    // Only "#/room" is a room: a plain "#id" is an in-page link (like the skip link).
    const hash = location.hash.startsWith('#/') ? location.hash.slice(2) : '';
    if (hash) {
      try {
        return decodeURIComponent(hash);
      } catch {
        return hash;
      }
    }
    return new URLSearchParams(location.search).get('room') || DEFAULT_ROOM;
  }

  // ---------------------------------------------------------------------------------------------
  // Connection

  function isOpen() {
    return state.ws !== null && state.ws.readyState === WebSocket.OPEN;
  }

  function send(frame) {
    if (!isOpen()) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    clearRetry();
    const signed = signedMode();
    if (!state.name && !signed) return;
    if (navigator.onLine === false) {
      setConn('offline');
      return;
    }
    if (signed && !tokenUsable()) {
      // Get a (new) token first; without one there is no signing in.
      setConn(state.attempt === 0 ? 'connecting' : 'reconnecting');
      fetchToken().then((jwt) => {
        if (jwt === null || (jwt === state.auth.jwt && !tokenUsable())) {
          noToken();
          return;
        }
        state.auth.jwt = jwt;
        connect();
      });
      return;
    }
    dropSocket();
    state.stayAway = false;
    state.awaiting = [];
    // Same scheme family and host as the page: works unchanged behind TLS and a reverse proxy.
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`, SUBPROTOCOL);
    } catch {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    setConn(state.attempt === 0 ? 'connecting' : 'reconnecting');
    ws.addEventListener('open', () => {
      if (ws !== state.ws) return;
      if (signed) {
        // The first frame; the joins follow the authed (they need no name: the token names us).
        state.auth.signing = true;
        send({ type: 'auth', token: state.auth.jwt });
        return;
      }
      for (const room of state.rooms.values()) sendJoin(room);
      if (state.rooms.size === 0) setConn('online'); // nothing to join: connected is all there is
    });
    ws.addEventListener('message', (event) => {
      if (ws !== state.ws || typeof event.data !== 'string') return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === 'object') handleFrame(frame);
    });
    ws.addEventListener('close', (event) => {
      if (ws !== state.ws) return; // a socket we dropped on purpose
      state.ws = null;
      onDisconnected(event.code, event.reason);
    });
  }

  function dropSocket() {
    const ws = state.ws;
    state.ws = null; // its close event is now ignored
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  }

  function onDisconnected(code, reason) {
    state.awaiting = [];
    state.auth.signing = false;
    clearTimeout(state.auth.refreshTimer);
    state.auth.refreshTimer = 0;
    for (const room of state.rooms.values()) {
      room.joinState = 'idle';
      // Not acked yet means maybe stored, maybe not: resend with the same ref after rejoining.
      for (const item of room.outbox) if (item.state === 'sending') item.state = 'queued';
    }
    renderOutboxStates();
    if (code === CLOSE_REPLACED) {
      state.stayAway = true;
      setConn('offline', 'offline: you joined from another tab or device');
      return;
    }
    if (CLOSE_STAY_AWAY.has(code)) {
      state.stayAway = true;
      setConn('offline', `offline: the server closed the connection (${CLOSE_STAY_AWAY.get(code)})`);
      return;
    }
    if (CLOSE_COME_BACK_SOON.has(code)) {
      scheduleReconnect(SOON_MIN_MS + Math.random() * SOON_JITTER_MS);
      return;
    }
    if (code === CLOSE_DISCONNECTED) {
      state.replaced = true; // offer "Reconnect now", but do not come back by itself
      setConn('offline', 'offline: disconnected by the application');
      return;
    }
    if (code === CLOSE_UNAUTHORIZED || code === CLOSE_TOKEN_EXPIRED) {
      state.auth.jwt = null; // refused or run out: only a new token can help
      if (!state.auth.tokenUrl || (code === CLOSE_UNAUTHORIZED && state.auth.retried)) {
        const why = code === CLOSE_TOKEN_EXPIRED ? 'your session expired' : `not signed in (${reason || 'refused'})`;
        setConn('offline', `offline: ${why}`);
        return;
      }
      state.auth.retried = code === CLOSE_UNAUTHORIZED;
    }
    scheduleReconnect();
  }

  // soonMs: a planned restart rather than a failure, so no backoff yet; should the server not
  // be back by then, the next failure backs off as usual.
  function scheduleReconnect(soonMs) {
    clearRetry();
    if (navigator.onLine === false) {
      setConn('offline');
      return;
    }
    let delay = soonMs;
    if (delay === undefined) {
      const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
      delay = ceiling / 2 + Math.random() * (ceiling / 2);
      state.attempt += 1;
    } else {
      state.attempt = Math.max(state.attempt, 1);
    }
    state.retryAt = Date.now() + delay;
    state.retryTimer = setTimeout(connect, delay);
    state.countdownTimer = setInterval(renderStatus, 250);
    setConn('reconnecting');
  }

  function clearRetry() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    state.retryTimer = 0;
    state.countdownTimer = 0;
    state.retryAt = 0;
  }

  function reconnectNow() {
    state.attempt = 0;
    connect();
  }

  function sendJoin(room) {
    const frame = { type: 'join', room: room.name };
    if (!state.auth.signed) frame.name = state.name; // a signed connection is named by its token
    if (room.welcomed) {
      frame.since = room.lastId ?? 0;
      if (room.epoch) frame.epoch = room.epoch;
    }
    if (state.token) frame.token = state.token;
    if (send(frame)) {
      room.joinState = 'joining';
      state.awaiting.push({ kind: 'join', room: room.name, withToken: Boolean(frame.token) });
    }
  }

  function sendSay(room, item) {
    if (room.joinState !== 'joined') return;
    if (send({ type: 'say', room: room.name, text: item.text, ref: item.ref })) {
      item.state = 'sending';
      renderOutboxItem(item);
    }
  }

  function flushOutbox(room) {
    for (const item of room.outbox) if (item.state === 'queued') sendSay(room, item);
  }

  function takeAwaiting(kind, roomName) {
    const i = state.awaiting.findIndex((a) => a.kind === kind && a.room === roomName);
    return i >= 0 ? state.awaiting.splice(i, 1)[0] : null;
  }

  // ---------------------------------------------------------------------------------------------
  // Frames from the server

  function handleFrame(frame) {
    switch (frame.type) {
      case 'welcome': return onWelcome(frame);
      case 'message': return onMessage(frame);
      case 'ack': return onAck(frame);
      case 'presence': return onPresence(frame);
      case 'members': return onMembers(frame);
      case 'resync': return onResync(frame);
      case 'left': return onLeft(frame);
      case 'error': return onServerError(frame);
      case 'authed': return onAuthed(frame);
      default: return undefined; // newer server: ignore what we do not know
    }
  }

  function onWelcome(frame) {
    takeAwaiting('join', frame.room);
    const room = state.rooms.get(frame.room);
    if (!room) {
      // Closed the tab while the join was on its way.
      if (send({ type: 'leave', room: frame.room })) state.awaiting.push({ kind: 'leave', room: frame.room });
      return;
    }
    if (typeof frame.token === 'string') state.token = frame.token;
    room.epoch = typeof frame.epoch === 'string' ? frame.epoch : null;
    if (typeof frame.name === 'string' && frame.name !== state.self) {
      state.self = frame.name; // a guest's name comes back marked
      renderMe();
    }
    state.attempt = 0;
    const history = Array.isArray(frame.history) ? frame.history.filter(isMessage) : [];
    const wasActive = room === activeRoom();
    const keepScrollTop = wasActive && !nearBottom() ? ui.messages.scrollTop : null;
    if (!room.welcomed || frame.recovered === false) {
      // recovered:false: some messages since our last id are gone; never show a partial set as
      // complete, show the server's latest history instead.
      replaceMessages(room, history);
    } else {
      for (const message of history) upsertMessage(room, message);
    }
    room.welcomed = true;
    room.joinState = 'joined';
    room.users = Array.isArray(frame.users) ? new Set(frame.users) : null;
    room.count = Number.isInteger(frame.count) ? frame.count : (room.users ? room.users.size : 0);
    room.listing = false;
    resetPages(room);
    if (room.users === null && room === activeRoom() && ui.people.open) requestPage(room);
    if (wasActive) {
      room.scrollTop = keepScrollTop;
      renderRoom();
      renderUsers();
    }
    renderTabs();
    setConn('online');
    flushOutbox(room);
  }

  function isMessage(m) {
    return m && Number.isInteger(m.id) && typeof m.text === 'string' && typeof m.name === 'string';
  }

  function onMessage(frame) {
    const room = state.rooms.get(frame.room);
    if (!room || !isMessage(frame)) return;
    const isNew = !room.byId.has(frame.id);
    const stick = room === activeRoom() && nearBottom();
    upsertMessage(room, frame);
    if (!isNew) return;
    if (room === activeRoom()) {
      if (stick || frame.name === me()) scrollToBottom();
      else ui.jump.hidden = false;
    } else if (frame.name !== me()) {
      room.unread += 1;
      renderTabs();
    }
    renderTitle();
  }

  function onAck(frame) {
    const room = state.rooms.get(frame.room);
    if (!room) return;
    const item = room.outbox.find((i) => i.ref === frame.ref);
    if (!item) return;
    removeOutboxItem(room, item);
    if (Number.isInteger(frame.id) && !room.byId.has(frame.id)) {
      // Shown now as delivered; the broadcast of the same id (if any) only refreshes its time.
      upsertMessage(room, {
        id: frame.id, room: room.name, name: me(), text: item.text, ts: new Date().toISOString(),
        user: state.auth.signed ? state.auth.signed.user : undefined,
        guest: !state.auth.signed && state.auth.mode === 'optional', // as the server marks it
      });
    }
    if (room === activeRoom()) scrollToBottom();
  }

  // Presence comes in batches (protocol.md): add `joined`, remove `left`. A batch without
  // them means the room is over the server's member-list limit: only the count is kept.
  function onPresence(frame) {
    const room = state.rooms.get(frame.room);
    if (!room) return;
    if (Number.isInteger(frame.count)) room.count = frame.count;
    if (!Array.isArray(frame.joined) || !Array.isArray(frame.left)) {
      if (room.users !== null) {
        room.users = null;
        resetPages(room);
      }
    } else if (room.users === null) {
      // Back under the limit: read the whole list again; later batches apply on top of it.
      if (!room.listing) {
        room.listing = true;
        room.paged = [];
        send({ type: 'who', room: room.name, limit: WHO_MAX_LIMIT });
      }
    } else {
      for (const name of frame.joined) room.users.add(name);
      for (const name of frame.left) room.users.delete(name);
    }
    if (room === activeRoom()) renderUsers();
  }

  // The server lost the thread of this room (its shared history skipped ahead of it): join
  // again with `since`, which answers with exactly what we missed or recovered:false.
  function onLeft(frame) {
    if (takeAwaiting('leave', frame.room)) return;
    const room = state.rooms.get(frame.room);
    if (!room || room.joinState !== 'joined') return;
    // Taken out by the server: `kicked` by an admin or the application, or `taken` (the name
    // went to someone else while this server was cut off from the others). The tab stays;
    // opening it again joins again.
    room.joinState = 'error';
    renderAll();
    showError(frame.reason === 'taken'
      ? `#${room.name}: your name was taken while the server was cut off; open the room to join again`
      : `#${room.name}: you were removed from the room; open it to join again`);
  }

  function onResync(frame) {
    const room = state.rooms.get(frame.room);
    if (room && room.joinState === 'joined') sendJoin(room);
  }

  function onMembers(frame) {
    const room = state.rooms.get(frame.room);
    if (!room || !Array.isArray(frame.names)) return;
    if (Number.isInteger(frame.count)) room.count = frame.count;
    room.paged.push(...frame.names);
    room.next = typeof frame.next === 'string' ? frame.next : null;
    room.pagedAll = room.next === null;
    room.paging = false;
    if (room.listing) {
      if (room.next !== null) {
        send({ type: 'who', room: room.name, after: room.next, limit: WHO_MAX_LIMIT });
        return;
      }
      room.listing = false;
      room.users = new Set(room.paged);
      resetPages(room);
    }
    if (room === activeRoom()) renderUsers();
  }

  function resetPages(room) {
    room.paged = [];
    room.next = null;
    room.pagedAll = false;
    room.paging = false;
  }

  function requestPage(room) {
    if (room.paging || room.pagedAll) return;
    const frame = { type: 'who', room: room.name, limit: WHO_PAGE };
    if (room.next !== null) frame.after = room.next;
    room.paging = send(frame);
  }

  function onServerError(frame) {
    const text = typeof frame.message === 'string' && frame.message ? frame.message : String(frame.code);
    if (frame.ref !== null && frame.ref !== undefined) {
      for (const room of state.rooms.values()) {
        const item = room.outbox.find((i) => i.ref === frame.ref);
        if (!item) continue;
        if (frame.code === 'unavailable') {
          item.state = 'queued';
          renderOutboxItem(item);
          setTimeout(() => flushOutbox(room), UNAVAILABLE_RETRY_MS);
        } else if (frame.code === 'rate_limited' && item.retries < RATE_LIMIT_MAX_RETRIES) {
          // Usually a burst of queued messages after a reconnect: slow down, keep the order.
          item.retries += 1;
          item.state = 'queued';
          renderOutboxItem(item);
          setTimeout(() => flushOutbox(room), RATE_LIMIT_RETRY_MS * item.retries);
        } else {
          item.state = 'failed';
          item.error = text;
          renderOutboxItem(item);
        }
        break;
      }
      showError(text);
      return;
    }
    const request = state.awaiting.shift();
    if (request && request.kind === 'join') onJoinError(request, frame, text);
    else showError(text);
  }

  function onJoinError(request, frame, text) {
    const room = state.rooms.get(request.room);
    if (!room) return;
    if (frame.code === 'invalid_field' && request.withToken) {
      // A token this server does not understand (say, a new server version): join without it.
      state.token = null;
      sendJoin(room);
      return;
    }
    room.joinState = 'error';
    renderTabs();
    showError(`#${room.name}: ${text}`);
    if (frame.code === 'unavailable') {
      setTimeout(() => {
        if (room.joinState === 'error' && isOpen()) sendJoin(room);
      }, UNAVAILABLE_RETRY_MS);
      return;
    }
    if (['name_taken', 'name_invalid', 'name_required'].includes(frame.code) && !state.auth.signed) askName(text);
    else if (state.conn !== 'online' && [...state.rooms.values()].every((r) => r.joinState === 'error')) {
      setConn('offline', 'offline: could not join');
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Message list

  function replaceMessages(room, history) {
    for (const m of room.messages) if (m.node) m.node.remove();
    room.messages = [];
    room.byId = new Map();
    room.lastId = null;
    const sorted = [...history].sort((a, b) => a.id - b.id);
    for (const message of sorted) upsertMessage(room, message);
  }

  function upsertMessage(room, message) {
    const known = room.byId.get(message.id);
    if (known) {
      // Same id again (history after a reconnect, or the broadcast after our ack): refresh only.
      known.ts = message.ts;
      if (known.node) setTime(known.node.querySelector('time'), known.ts);
      return;
    }
    const entry = {
      id: message.id,
      name: message.name,
      text: message.text,
      ts: message.ts,
      user: typeof message.user === 'string' ? message.user : null,
      guest: message.guest === true,
      node: null,
    };
    room.byId.set(entry.id, entry);
    const list = room.messages;
    let i = list.length;
    while (i > 0 && list[i - 1].id > entry.id) i -= 1;
    list.splice(i, 0, entry);
    if (room.lastId === null || entry.id > room.lastId) room.lastId = entry.id;
    if (room === activeRoom()) {
      const next = list[i + 1];
      const firstPending = room.outbox.find((item) => item.node && item.node.isConnected);
      const before = next && next.node && next.node.isConnected ? next.node : (firstPending ? firstPending.node : null);
      ui.messages.insertBefore(messageNode(entry), before);
      ui.empty.hidden = true;
    }
  }

  function messageNode(entry) {
    if (entry.node) return entry.node;
    const own = entry.name === me();
    const li = el('li', own ? 'msg own' : 'msg');
    li.dataset.id = String(entry.id);
    li.dataset.name = entry.name;
    const meta = el('div', 'meta');
    const author = el('span', 'author', entry.name);
    if (entry.user !== null) {
      // Signed by the application: two people with one display name differ by their user id.
      author.classList.add('signed');
      author.dataset.user = entry.user;
      author.title = `signed in as ${entry.user}`;
    } else if (entry.guest) {
      author.classList.add('guest');
      author.title = 'a guest: not signed in';
    }
    meta.append(author);
    if (own) meta.append(el('span', 'visually-hidden', ' (you)'));
    const time = el('time');
    setTime(time, entry.ts);
    meta.append(' ', time);
    li.append(meta, el('p', 'text', entry.text));
    entry.node = li;
    return li;
  }

  const OUTBOX_NOTE = { queued: 'Waiting for connection…', sending: 'Sending…', failed: 'Not sent' };

  function outboxNode(item) {
    if (item.node) return item.node;
    const li = el('li', 'msg own pending');
    li.dataset.ref = item.ref;
    const meta = el('div', 'meta');
    meta.append(el('span', 'author', me()), el('span', 'visually-hidden', ' (you)'), ' ', el('span', 'note'));
    const actions = el('div', 'actions');
    const retry = el('button', 'link-button retry', 'Retry');
    retry.type = 'button';
    retry.addEventListener('click', () => retryItem(item));
    const discard = el('button', 'link-button discard', 'Discard');
    discard.type = 'button';
    discard.addEventListener('click', () => discardItem(item));
    actions.append(retry, discard);
    li.append(meta, el('p', 'text', item.text), actions);
    item.node = li;
    renderOutboxItem(item);
    return li;
  }

  function renderOutboxItem(item) {
    const li = item.node;
    if (!li) return;
    li.dataset.state = item.state;
    li.classList.toggle('failed', item.state === 'failed');
    const note = item.state === 'failed' && item.error ? `Not sent: ${item.error}` : OUTBOX_NOTE[item.state];
    li.querySelector('.note').textContent = note;
    li.querySelector('.actions').hidden = item.state !== 'failed';
  }

  function renderOutboxStates() {
    for (const room of state.rooms.values()) for (const item of room.outbox) renderOutboxItem(item);
  }

  function removeOutboxItem(room, item) {
    room.outbox.splice(room.outbox.indexOf(item), 1);
    if (item.node) item.node.remove();
    ui.empty.hidden = !(room === activeRoom() && room.messages.length === 0 && room.outbox.length === 0);
  }

  function retryItem(item) {
    const room = [...state.rooms.values()].find((r) => r.outbox.includes(item));
    if (!room) return;
    item.state = 'queued';
    item.error = '';
    item.retries = 0;
    renderOutboxItem(item);
    sendSay(room, item);
    ui.input.focus();
  }

  function discardItem(item) {
    const room = [...state.rooms.values()].find((r) => r.outbox.includes(item));
    if (room) removeOutboxItem(room, item);
    ui.input.focus();
  }

  function nearBottom() {
    const list = ui.messages;
    return list.scrollHeight - list.scrollTop - list.clientHeight < STICKY_BOTTOM_PX;
  }

  function scrollToBottom() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
    ui.jump.hidden = true;
  }

  // ---------------------------------------------------------------------------------------------
  // Rendering

  function renderAll() {
    renderTabs();
    renderRoom();
    renderUsers();
    renderStatus();
    renderTitle();
  }

  function renderRoom() {
    const room = activeRoom();
    const nodes = [];
    if (room) {
      for (const entry of room.messages) nodes.push(messageNode(entry));
      for (const item of room.outbox) nodes.push(outboxNode(item));
    }
    ui.messages.replaceChildren(...nodes);
    ui.messages.setAttribute('aria-label', room ? `Messages in #${room.name}` : 'Messages');
    ui.empty.hidden = !(room && room.welcomed && nodes.length === 0);
    ui.input.placeholder = room ? `Message #${room.name}` : 'Join a room first';
    if (room && room.scrollTop !== null) {
      ui.messages.scrollTop = room.scrollTop;
      room.scrollTop = null;
      ui.jump.hidden = nearBottom();
    } else {
      scrollToBottom();
    }
  }

  function renderTabs() {
    const items = [];
    for (const room of state.rooms.values()) {
      const selected = room.name === state.active;
      const li = el('li', 'tab');
      li.setAttribute('role', 'presentation');
      li.dataset.room = room.name;
      li.dataset.state = room.joinState;
      const tab = el('button', 'tab-button');
      tab.type = 'button';
      tab.setAttribute('role', 'tab');
      tab.setAttribute('aria-selected', String(selected));
      tab.setAttribute('aria-controls', 'messages');
      tab.tabIndex = selected ? 0 : -1;
      tab.dataset.room = room.name;
      tab.append(el('span', 'hash', '#'), el('span', 'room-name', room.name));
      if (room.unread > 0) {
        const badge = el('span', 'badge', String(room.unread));
        badge.setAttribute('aria-label', `${room.unread} unread`);
        tab.append(badge);
      }
      tab.addEventListener('click', () => setActive(room.name));
      tab.addEventListener('keydown', onTabKey);
      const close = el('button', 'tab-close', '×');
      close.type = 'button';
      close.setAttribute('aria-label', `Leave #${room.name}`);
      close.title = `Leave #${room.name}`;
      close.addEventListener('click', () => closeRoom(room.name));
      li.append(tab, close);
      items.push(li);
    }
    ui.tabs.replaceChildren(...items);
  }

  function onTabKey(event) {
    const names = [...state.rooms.keys()];
    const i = names.indexOf(state.active);
    let next = null;
    if (event.key === 'ArrowRight') next = names[(i + 1) % names.length];
    else if (event.key === 'ArrowLeft') next = names[(i - 1 + names.length) % names.length];
    else if (event.key === 'Home') next = names[0];
    else if (event.key === 'End') next = names[names.length - 1];
    if (next === null) return;
    event.preventDefault();
    setActive(next);
    const button = ui.tabs.querySelector(`button.tab-button[data-room="${CSS.escape(next)}"]`);
    if (button) button.focus();
  }

  function renderUsers() {
    const room = activeRoom();
    const big = room !== null && room.users === null;
    const names = !room ? [] : big ? room.paged : [...room.users].sort();
    const items = names.map((name) => {
      const li = el('li', name === me() ? 'user own' : 'user');
      li.dataset.name = name;
      li.append(el('span', 'dot'), el('span', 'user-name', name));
      if (name === me()) li.append(el('span', 'you', 'you'));
      return li;
    });
    ui.users.replaceChildren(...items);
    ui.userCount.textContent = String(room ? room.count : 0);
    ui.usersMore.hidden = !big || room.pagedAll || !room.paged.length;
    ui.usersNote.hidden = !big;
    if (big) {
      ui.usersNote.textContent = room.pagedAll
        ? `${room.count} people`
        : `${room.count} people; showing ${names.length}`;
    }
  }

  function setConn(conn, text) {
    state.conn = conn;
    state.connText = text || '';
    if (conn !== 'reconnecting') clearInterval(state.countdownTimer);
    renderStatus();
  }

  function renderStatus() {
    let text = state.connText || state.conn;
    if (state.conn === 'connecting') text = 'connecting…';
    if (state.conn === 'reconnecting') {
      if (state.retryAt) {
        const seconds = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
        text = `reconnecting in ${seconds} s`;
      } else {
        text = 'reconnecting…';
      }
    }
    if (state.conn === 'offline' && !state.connText && navigator.onLine === false) {
      text = 'offline: no network';
    }
    ui.status.dataset.state = state.conn;
    if (ui.status.textContent !== text) ui.status.textContent = text;
    ui.reconnectNow.hidden = !(state.conn === 'reconnecting' && state.retryAt) && !state.stayAway;
  }

  function renderTitle() {
    let unread = 0;
    for (const room of state.rooms.values()) unread += room.unread;
    document.title = unread > 0 ? `(${unread}) wschat` : state.active ? `#${state.active} · wschat` : 'wschat';
  }

  function renderMe() {
    const signed = state.auth.signed;
    ui.meName.textContent = me();
    ui.me.hidden = !me();
    // A signed name is the application's: it cannot be changed here.
    ui.me.disabled = signed !== null;
    ui.me.dataset.signed = String(signed !== null);
    ui.me.title = signed ? `Signed in as ${signed.user}` : 'Change your name';
    ui.me.setAttribute('aria-label', signed ? `Signed in as ${signed.name}` : 'Change your name');
  }

  // ---------------------------------------------------------------------------------------------
  // Errors next to the input (never alert())

  function showError(text) {
    ui.error.textContent = text;
  }

  function clearError() {
    ui.error.textContent = '';
  }

  // ---------------------------------------------------------------------------------------------
  // User actions

  function submitMessage() {
    const text = ui.input.value;
    const room = activeRoom();
    if (!room) {
      showError('Join a room first.');
      return;
    }
    if (!text.trim()) {
      showError('Type a message first.');
      return;
    }
    const length = charCount(text);
    if (length > MAX_TEXT_CHARS) {
      showError(`Too long: ${length} characters, at most ${MAX_TEXT_CHARS}.`);
      return;
    }
    clearError();
    const item = { ref: newRef(), text, state: 'queued', error: '', retries: 0, node: null };
    room.outbox.push(item);
    ui.messages.append(outboxNode(item));
    ui.empty.hidden = true;
    ui.input.value = '';
    autosize();
    sendSay(room, item);
    scrollToBottom();
  }

  function autosize() {
    ui.input.style.height = 'auto';
    ui.input.style.height = `${Math.min(ui.input.scrollHeight, 160)}px`;
  }

  function askName(problem) {
    ui.nameInput.value = state.name;
    ui.nameError.textContent = problem || '';
    if (!ui.nameDialog.open) ui.nameDialog.showModal();
    ui.nameInput.focus();
    ui.nameInput.select();
  }

  function onNameSubmit(event) {
    event.preventDefault();
    const name = ui.nameInput.value;
    const problem = nameProblem(name);
    if (problem) {
      ui.nameError.textContent = problem;
      ui.nameInput.focus();
      return;
    }
    ui.nameError.textContent = '';
    ui.nameDialog.close();
    const changed = name !== state.name;
    saveName(name);
    state.name = name;
    renderMe();
    const failed = [...state.rooms.values()].some((room) => room.joinState === 'error');
    if (changed || failed || !isOpen()) {
      // A connection has one name in all its rooms: a new name needs a new connection.
      clearError();
      state.token = null;
      for (const room of state.rooms.values()) {
        for (const m of room.messages) m.node = null; // "own" marks follow the name
        for (const item of room.outbox) {
          if (item.node) item.node.remove();
          item.node = null;
        }
      }
      renderRoom();
      dropSocket();
      reconnectNow();
    }
    ui.input.focus();
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring

  function init() {
    ui.composer.addEventListener('submit', (event) => {
      event.preventDefault();
      submitMessage();
    });
    ui.input.addEventListener('keydown', (event) => {
      // Enter sends, Shift+Enter is a newline; never while an IME is composing.
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submitMessage();
      }
    });
    ui.input.addEventListener('input', () => {
      autosize();
      if (ui.error.textContent) clearError();
    });
    ui.roomForm.addEventListener('submit', (event) => {
      event.preventDefault();
      const name = ui.roomInput.value.trim().replace(/^#/, '');
      if (!name) return;
      if (openRoom(name, { focus: true })) ui.roomInput.value = '';
    });
    ui.nameForm.addEventListener('submit', onNameSubmit);
    ui.nameDialog.addEventListener('cancel', (event) => {
      if (!state.name) event.preventDefault(); // nothing works without a name
    });
    ui.me.addEventListener('click', () => {
      if (!state.auth.signed) askName('');
    });
    ui.reconnectNow.addEventListener('click', reconnectNow);
    ui.jump.addEventListener('click', () => {
      scrollToBottom();
      ui.input.focus();
    });
    ui.messages.addEventListener('scroll', () => {
      if (nearBottom()) ui.jump.hidden = true;
    }, { passive: true });
    window.addEventListener('hashchange', () => {
      if (location.hash.startsWith('#/')) openRoom(roomFromUrl());
    });
    document.querySelector('.skip-link').addEventListener('click', (event) => {
      event.preventDefault(); // keep the room in the URL
      ui.input.focus();
    });
    window.addEventListener('online', () => {
      if (!state.ws && !state.stayAway) reconnectNow();
    });
    document.addEventListener('visibilitychange', () => {
      // Background tabs have their timers throttled: don't make a returning person wait it out.
      if (document.visibilityState === 'visible' && state.retryTimer) reconnectNow();
    });
    window.addEventListener('offline', () => {
      if (!isOpen()) {
        clearRetry();
        setConn('offline');
      }
    });
    window.addEventListener('beforeunload', (event) => {
      const unsent = [...state.rooms.values()].some((room) => room.outbox.length > 0);
      if (unsent) event.preventDefault(); // the browser asks before unsent messages are lost
    });
    ui.people.addEventListener('toggle', () => {
      const room = activeRoom();
      if (ui.people.open && room && room.users === null && !room.paged.length) requestPage(room);
    });
    ui.usersMore.addEventListener('click', () => {
      const room = activeRoom();
      if (room && room.users === null) requestPage(room);
    });
    const wide = window.matchMedia('(min-width: 760px)');
    ui.people.open = wide.matches;
    wide.addEventListener('change', () => {
      ui.people.open = wide.matches;
    });

    state.auth.jwt = takeFragmentToken();
    const first = roomFromUrl();
    if (!openRoom(first)) openRoom(DEFAULT_ROOM);
    loadConfig().then(start);
  }

  function start() {
    if (signedMode()) {
      renderMe();
      connect();
      return;
    }
    if (state.auth.mode === 'required') {
      setConn('offline', 'offline: sign in to the application to chat');
      return;
    }
    renderMe();
    if (state.name && !nameProblem(state.name)) {
      connect();
    } else {
      state.name = '';
      setConn('offline', 'offline: choose a name');
      askName('');
    }
  }

  init();
})();
