// What one connection says: it signs in first when the page is signed (and refreshes its token
// before it expires), joins every open room with `since`, `epoch` and the resume token so that
// nothing is missed or shown twice, and sends each room's outbox with its `ref` (the server
// dedupes by ref, so a message resent after a reconnect is stored once).

import { fetchToken } from './auth.js';
import { isOpen, send } from './connection.js';
import { state } from './state.js';
import { renderMe, renderOutboxItem, renderOutboxStates, setConn } from './views.js';

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

export function sendSay(room, item) {
  if (room.joinState !== 'joined') return;
  if (send({ type: 'say', room: room.name, text: item.text, ref: item.ref })) {
    item.state = 'sending';
    renderOutboxItem(item);
  }
}

export function flushOutbox(room) {
  for (const item of room.outbox) if (item.state === 'queued') sendSay(room, item);
}
