// What one connection says: it signs in first when the page is signed (and refreshes its token
// before it expires), joins every open room with `since`, `epoch` and the resume token so that
// nothing is missed or shown twice, and sends each room's outbox with its `ref` (the server
// dedupes by ref, so a message resent after a reconnect is stored once).
//
// Every room's outbox goes out on one schedule: paced under the server's --rate and --burst
// (/config.json), so that the page is never refused for them; and while the server cannot store
// (`unavailable`: its Redis is down; `storage_unavailable`: its disk), one message at a time is
// tried again with backoff and jitter until one is acked, then the rest follow.

import { fetchToken } from './auth.js';
import { isOpen, send } from './connection.js';
import { state } from './state.js';
import { renderOutboxItem, renderOutboxStates } from './items.js';
import { renderMe, setConn } from './views.js';

// While the server cannot store: wait 0.5–1 s, 1–2 s, then 2–4 s before each try ("equal
// jitter", so that the pages of one outage do not all try at once).
const OUTAGE_BASE_MS = 1000;
const OUTAGE_MAX_MS = 4000;
// Should the server refuse us for our rate anyway (another tab, or --rate-per-ip): wait this
// long with an empty bucket.
const RATE_LIMITED_WAIT_MS = 1500;
// A share of the server's limit only: frames sent at an even pace may arrive bunched.
const RATE_SHARE = 0.8;
const BURST_SHARE = 0.5;
// Fetch a new token this long before the current one expires (or at 4/5 of a shorter life).
const REFRESH_BEFORE_MS = 60000;
const REFRESH_RETRY_MS = 10000;

export function onOpen(signed) {
  if (signed) {
    // The first frame; the joins follow the authed (they need no name: the token names us).
    state.auth.signing = true;
    send({ type: 'auth', token: state.auth.jwt });
    return;
  }
  for (const room of state.rooms.values()) sendJoin(room);
  if (state.rooms.size === 0) setConn('online'); // nothing to join: connected is all there is
}

export function onClosed() {
  state.awaiting = [];
  state.auth.signing = false;
  clearTimeout(state.auth.refreshTimer);
  state.auth.refreshTimer = 0;
  for (const room of state.rooms.values()) {
    room.joinState = 'idle';
    // Requests on their way are lost with the connection (history.js, search.js ask again).
    room.loading = null;
    room.queued = null;
    room.search.loading = false;
    // Not acked yet means maybe stored, maybe not: resend with the same ref after rejoining.
    for (const item of room.outbox) if (item.state === 'sending') item.state = 'queued';
  }
  renderOutboxStates();
}

export function onAuthed(frame) {
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

export function sendJoin(room) {
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

export function sendLeave(roomName) {
  if (send({ type: 'leave', room: roomName })) state.awaiting.push({ kind: 'leave', room: roomName });
}

export function takeAwaiting(kind, roomName) {
  const i = state.awaiting.findIndex((a) => a.kind === kind && a.room === roomName);
  return i >= 0 ? state.awaiting.splice(i, 1)[0] : null;
}

const pacer = {
  tokens: null, // the page's own bucket, full at first
  last: 0,
  timer: 0,
  holdUntil: 0, // nothing is sent before this (a wait after a refusal)
  outage: false, // the server cannot store: one message on its way at a time
  step: 0, // how many waits this outage has had
  heldAt: 0, // when the last wait began: an answer to a say sent before it is no news
};

// Send what is queued, as soon as the schedule allows.
export function flushOutbox() {
  arm(0);
}

function arm(delayMs) {
  clearTimeout(pacer.timer);
  pacer.timer = setTimeout(pump, Math.max(0, delayMs));
}

function pump() {
  pacer.timer = 0;
  if (!isOpen()) return; // each welcome after the reconnect flushes again
  const now = Date.now();
  if (now < pacer.holdUntil) {
    arm(pacer.holdUntil - now);
    return;
  }
  const rooms = [...state.rooms.values()];
  if (pacer.outage && rooms.some((r) => r.outbox.some((i) => i.state === 'sending'))) return;
  for (const room of rooms) {
    if (room.joinState !== 'joined') continue;
    for (const item of room.outbox) {
      if (item.state !== 'queued') continue;
      const wait = tokenWait(now);
      if (wait > 0) {
        arm(wait);
        return;
      }
      sendSay(room, item, now);
      if (pacer.outage) return;
    }
  }
}

// 0 after taking a token from the page's bucket, else how long until there is one.
function tokenWait(now) {
  const rate = state.limits.rate * RATE_SHARE;
  if (!(rate > 0)) return 0; // no limit
  const burst = Math.max(1, Math.floor(state.limits.burst * BURST_SHARE));
  if (pacer.tokens === null) pacer.tokens = burst;
  pacer.tokens = Math.min(burst, pacer.tokens + ((now - pacer.last) / 1000) * rate);
  pacer.last = now;
  if (pacer.tokens >= 1) {
    pacer.tokens -= 1;
    return 0;
  }
  return Math.ceil(((1 - pacer.tokens) / rate) * 1000);
}

function sendSay(room, item, now) {
  if (send({ type: 'say', room: room.name, text: item.text, ref: item.ref })) {
    item.state = 'sending';
    item.sentAt = now;
    renderOutboxItem(item);
  }
}

// A say was acked: whatever stopped the server storing is over.
export function sayAcked() {
  // An ack ends an outage's wait; a wait after `rate_limited` runs its course (the says that
  // were on their way when it came are acked meanwhile).
  if (pacer.outage) {
    pacer.outage = false;
    pacer.step = 0;
    pacer.holdUntil = 0;
  }
  flushOutbox();
}

// A say was refused with `code`. Returns whether it is queued again (a refusal that waiting
// fixes); if not, the caller marks it as not sent.
export function sayRefused(item, code) {
  const now = Date.now();
  if (code === 'unavailable' || code === 'storage_unavailable') {
    item.state = 'queued';
    // The other says that were on their way when the outage began get the same answer: one
    // wait per try, not one per answer.
    if (item.sentAt > pacer.heldAt) {
      const ceiling = Math.min(OUTAGE_MAX_MS, OUTAGE_BASE_MS * 2 ** pacer.step);
      pacer.step += 1;
      pacer.outage = true;
      pacer.heldAt = now;
      pacer.holdUntil = now + ceiling / 2 + Math.random() * (ceiling / 2);
    }
  } else if (code === 'rate_limited') {
    item.state = 'queued';
    pacer.tokens = 0;
    pacer.holdUntil = Math.max(pacer.holdUntil, now + RATE_LIMITED_WAIT_MS);
  } else {
    return false;
  }
  renderOutboxItem(item);
  flushOutbox();
  return true;
}
