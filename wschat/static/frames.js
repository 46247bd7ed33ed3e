// Frames from the server, one handler per type. A message is shown once per (room, id), in id
// order, whatever mix of history, live messages, acks and reconnects delivers it.

import { ui } from './dom.js';
import { isOpen } from './connection.js';
import { onHistoryError, onPage } from './history.js';
import { renderOutboxItem } from './items.js';
import { onMembers, onPresence, requestPage, resetPages } from './members.js';
import { onResults, onSearchError } from './search.js';
import {
  flushOutbox,
  onAuthed,
  sayAcked,
  sayRefused,
  sendJoin,
  sendLeave,
  takeAwaiting,
} from './session.js';
import { activeRoom, isMessage, me, state } from './state.js';
import { addLive, followBottom, removeOutboxItem, setWindow } from './timeline.js';
import {
  askName,
  clearError,
  renderAll,
  renderMe,
  renderTabs,
  renderTitle,
  renderUsers,
  setConn,
  showError,
} from './views.js';

// A join answered `unavailable` (the server's shared store, Redis, is down) is tried again.
const UNAVAILABLE_RETRY_MS = 2000;
// Server trouble that passes (`unavailable`, `storage_unavailable`): the error line says so
// until the server answers again, then is cleared.
const PASSING = new Set(['unavailable', 'storage_unavailable']);
let passingError = '';

export function handleFrame(frame) {
  switch (frame.type) {
    case 'welcome': return onWelcome(frame);
    case 'message': return onMessage(frame);
    case 'ack': return onAck(frame);
    case 'presence': return inRoom(frame, onPresence);
    case 'members': return inRoom(frame, onMembers);
    case 'resync': return onResync(frame);
    case 'page': return onPage(frame);
    case 'results': return onResults(frame);
    case 'left': return onLeft(frame);
    case 'error': return onServerError(frame);
    case 'authed': return onAuthed(frame);
    default: return undefined; // newer server: ignore what we do not know
  }
}

// A frame about a room this page no longer has open is dropped.
function inRoom(frame, handler) {
  const room = state.rooms.get(frame.room);
  if (room) handler(room, frame);
}

function onWelcome(frame) {
  takeAwaiting('join', frame.room);
  const room = state.rooms.get(frame.room);
  if (!room) {
    // Closed the tab while the join was on its way.
    sendLeave(frame.room);
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
  if (!room.welcomed || frame.recovered === false) {
    // recovered:false: some messages since our last id are gone; never show a partial set as
    // complete, show the server's latest history instead. Before the first welcome, what came
    // live (a takeover's messages) stays where it is newer.
    if (room.welcomed) room.arrived = [];
    room.lastId = null; // `since` counts from this history now (it may be a new epoch's)
    setWindow(room, history, { olderMore: history.length > 0, live: true });
    followBottom(room);
  } else {
    for (const message of history) addLive(room, message);
  }
  room.welcomed = true;
  room.joinState = 'joined';
  room.users = Array.isArray(frame.users) ? new Set(frame.users) : null;
  room.count = Number.isInteger(frame.count) ? frame.count : (room.users ? room.users.size : 0);
  room.listing = false;
  resetPages(room);
  if (room.users === null && room === activeRoom() && ui.people.open) requestPage(room);
  if (room === activeRoom()) renderUsers();
  renderTabs();
  setConn('online');
  serverBack();
  flushOutbox();
}

// The server answered a join or a say again: its trouble (if it had any) is over.
function serverBack() {
  if (passingError && ui.error.textContent === passingError) clearError();
  passingError = '';
}

function showPassingError(text) {
  passingError = text;
  showError(text);
}

function onMessage(frame) {
  const room = state.rooms.get(frame.room);
  if (!room || !isMessage(frame)) return;
  const own = frame.name === me();
  // Our own message (from another tab) brings the list down to it, as sending does.
  if (own && room.live && room === activeRoom()) followBottom(room);
  if (!addLive(room, frame)) return;
  if (room !== activeRoom() && !own) {
    room.unread += 1;
    renderTabs();
    renderTitle();
  }
}

function onAck(frame) {
  const room = state.rooms.get(frame.room);
  if (!room) return;
  const item = room.outbox.find((i) => i.ref === frame.ref);
  if (!item) return;
  serverBack();
  sayAcked();
  removeOutboxItem(room, item);
  if (Number.isInteger(frame.id) && !room.byId.has(frame.id)) {
    // Shown now as delivered; the broadcast of the same id (if any) only refreshes its time.
    if (room.live && room === activeRoom()) followBottom(room);
    addLive(room, {
      id: frame.id, room: room.name, name: me(), text: item.text, ts: new Date().toISOString(),
      user: state.auth.signed ? state.auth.signed.user : undefined,
      guest: !state.auth.signed && state.auth.mode === 'optional', // as the server marks it
    });
  }
}

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

// The server lost the thread of this room (its shared history skipped ahead of it): join
// again with `since`, which answers with exactly what we missed or recovered:false.
function onResync(frame) {
  const room = state.rooms.get(frame.room);
  if (room && room.joinState === 'joined') sendJoin(room);
}

function onServerError(frame) {
  const text = typeof frame.message === 'string' && frame.message ? frame.message : String(frame.code);
  if (frame.ref !== null && frame.ref !== undefined) {
    for (const room of state.rooms.values()) {
      const item = room.outbox.find((i) => i.ref === frame.ref);
      if (!item) continue;
      if (!sayRefused(item, frame.code)) {
        item.state = 'failed';
        item.error = text;
        renderOutboxItem(item);
        // The next one may go (during an outage, one try at a time waits for this answer).
        flushOutbox();
      }
      break;
    }
    if (PASSING.has(frame.code)) showPassingError(text);
    else if (frame.code !== 'rate_limited') showError(text);
    return;
  }
  // Requests without a ref are answered in order: the oldest one waiting is refused. A search
  // refused for having no index says so itself.
  const search = frame.code === 'search_unavailable';
  const i = search ? state.awaiting.findIndex((a) => a.kind === 'search') : 0;
  const request = i >= 0 ? state.awaiting.splice(i, 1)[0] : undefined;
  if (request && request.kind === 'join') onJoinError(request, frame, text);
  else if (request && request.kind === 'history') onHistoryError(request.room, frame.code, text);
  else if (request && request.kind === 'search') onSearchError(request.room, frame.code, text);
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
  if (PASSING.has(frame.code)) showPassingError(`#${room.name}: ${text}`);
  else showError(`#${room.name}: ${text}`);
  if (PASSING.has(frame.code)) {
    // Spread over 1-1.5 retry intervals, so that the pages of one outage do not all come back
    // in the same instant.
    setTimeout(() => {
      if (room.joinState === 'error' && isOpen()) sendJoin(room);
    }, UNAVAILABLE_RETRY_MS * (1 + Math.random() / 2));
    return;
  }
  if (['name_taken', 'name_invalid', 'name_required'].includes(frame.code) && !state.auth.signed) askName(text);
  else if (state.conn !== 'online' && [...state.rooms.values()].every((r) => r.joinState === 'error')) {
    setConn('offline', 'offline: could not join');
  }
}
