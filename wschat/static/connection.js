// The WebSocket: opening it (with a token first when signing in), what each close code means,
// and coming back with backoff. What is said on it belongs to session.js and frames.js, which
// app.js plugs in with setHandlers().

import { fetchToken, signedMode, tokenUsable } from './auth.js';
import { nameProblem } from './limits.js';
import { state } from './state.js';
import { askName, renderStatus, setConn } from './views.js';

const SUBPROTOCOL = 'wschat.v1';
// Reconnect delay: exponential backoff with "equal jitter" (half fixed, half random), so a crowd
// of clients dropped by one server restart does not come back in lockstep.
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30000;
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

// open(signed): the socket is open; frame(object): a JSON object came; closed(): the socket
// closed by itself (not one dropped on purpose), before its close code is acted on.
const handlers = { open: () => {}, frame: () => {}, closed: () => {} };

export function setHandlers({ open, frame, closed }) {
  handlers.open = open;
  handlers.frame = frame;
  handlers.closed = closed;
}

export function isOpen() {
  return state.ws !== null && state.ws.readyState === WebSocket.OPEN;
}

export function send(frame) {
  if (!isOpen()) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

export function connect() {
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
    handlers.open(signed);
  });
  ws.addEventListener('message', (event) => {
    if (ws !== state.ws || typeof event.data !== 'string') return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (frame && typeof frame === 'object') handlers.frame(frame);
  });
  ws.addEventListener('close', (event) => {
    if (ws !== state.ws) return; // a socket we dropped on purpose
    state.ws = null;
    onDisconnected(event.code, event.reason);
  });
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

export function dropSocket() {
  const ws = state.ws;
  state.ws = null; // its close event is now ignored
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
}

function onDisconnected(code, reason) {
  handlers.closed();
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

export function clearRetry() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdownTimer);
  state.retryTimer = 0;
  state.countdownTimer = 0;
  state.retryAt = 0;
}

export function reconnectNow() {
  state.attempt = 0;
  connect();
}
