// A room's messages on the page: a window of at most MAX_WINDOW of them, in id order, a run of
// the room's history with nothing missing inside it. Either the window reaches the newest
// message (room.live), and live messages join it; or it ends short of it, once the person
// scrolled back further than the window holds or opened a search result: live messages then
// only count for the jump button, and history.js reads them back from the server. Messages that
// leave the window at either end come back the same way, by scrolling.
//
// The list is redrawn at most once per animation frame: the messages of one frame are added in
// one batch (a DocumentFragment), and the layout is read once per redraw, to keep the bottom in
// view or the reading position where it was; never once per message.

import { setTime, ui } from './dom.js';
import { messageNode, outboxNode } from './items.js';
import { activeRoom, entryOf, noteId, state, storeMessage } from './state.js';

// Enough for several screens either way, few enough that a page open for hours in a busy room
// lays out as fast as a fresh one.
export const MAX_WINDOW = 500;
const TRIM_CHUNK = 100;
// Closer than this to the bottom counts as "reading the newest messages": keep following.
const STICKY_BOTTOM_PX = 48;

let frame = 0;
let shown = null; // the room whose messages the list holds
// Called after each redraw of the active room (app.js plugs history.js in: it asks for more
// when the list is near one of its ends).
let afterRender = () => {};

export function setAfterRender(fn) {
  afterRender = fn;
}

function nearBottom() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < STICKY_BOTTOM_PX;
}

// ---------------------------------------------------------------------------------------------
// The window

// A message as it happens (live, an ack, a welcome's recovery). Returns whether it is new to
// the page: never seen, in the window or out of it.
export function addLive(room, message) {
  const known = room.byId.get(message.id);
  if (known) {
    // Same id again (history after a reconnect, or the broadcast after our ack): its time only.
    known.ts = message.ts;
    if (known.node) setTime(known.node.querySelector('time'), known.ts);
    return false;
  }
  keepArrived(room, message);
  const first = room.messages[0];
  if (!room.live || (first && message.id < first.id && room.olderMore)) {
    // Beyond the window: history.js reads it back when the person gets there.
    const isNew = noteId(room, message.id);
    if (isNew) {
      room.unseen += 1;
      scheduleRender();
    }
    return isNew;
  }
  const isNew = room.lastId === null || message.id > room.lastId;
  storeMessage(room, message);
  if (isNew && !room.following) room.unseen += 1;
  // Following the bottom, the oldest make room; reading older ones, the newest wait outside.
  trim(room, room.following ? 'oldest' : 'newest');
  scheduleRender();
  return isNew;
}

// The live messages of the last moments, for a page that ends the window at the newest message:
// what came while it was on its way joins it (ids above the page's last).
function keepArrived(room, message) {
  room.arrived.push(message);
  if (room.arrived.length > MAX_WINDOW) room.arrived.splice(0, room.arrived.length - MAX_WINDOW);
}

// The window is these messages now (a welcome, the newest page, the page around a result).
export function setWindow(room, messages, { olderMore, live }) {
  let kept = [...messages].sort((a, b) => a.id - b.id);
  if (live) {
    const last = kept.length ? kept[kept.length - 1].id : -1;
    kept = kept.concat(room.arrived.filter((m) => m.id > last).sort((a, b) => a.id - b.id));
  }
  const start = Math.max(0, kept.length - MAX_WINDOW);
  room.messages = [];
  room.byId = new Map();
  room.gone = [];
  for (const message of kept.slice(start)) storeMessage(room, message);
  room.olderMore = olderMore || start > 0;
  room.live = live;
  room.arrived = [];
  room.rebuild = true;
  scheduleRender();
}

// An older page, to go above the window's first message; the reading position stays.
export function prependOlder(room, messages, more) {
  const first = room.messages[0];
  const older = messages.filter((m) => !first || m.id < first.id).sort((a, b) => a.id - b.id);
  const entries = older.map(entryOf);
  for (const entry of entries) room.byId.set(entry.id, entry);
  room.messages = entries.concat(room.messages);
  room.olderMore = more && older.length > 0;
  room.shifted = true;
  trim(room, 'newest');
  scheduleRender();
}

// A newer page, after the window's last message; without `more` it reached the newest.
export function appendNewer(room, messages, more) {
  const last = room.messages[room.messages.length - 1];
  const newer = messages.filter((m) => !last || m.id > last.id).sort((a, b) => a.id - b.id);
  for (const message of newer) storeMessage(room, message);
  if (!more || newer.length === 0) {
    room.live = true;
    const end = room.messages.length ? room.messages[room.messages.length - 1].id : -1;
    for (const message of room.arrived) {
      if (message.id > end) storeMessage(room, message);
    }
    room.arrived = [];
  }
  trim(room, 'oldest');
  scheduleRender();
}

function trim(room, end) {
  if (room.messages.length <= MAX_WINDOW) return;
  // Leaving from the top moves every message left up, which costs a walk over all of them
  // (pre-paint, paint): so they leave TRIM_CHUNK at a time, not one per new message.
  const over = room.messages.length - MAX_WINDOW + (end === 'oldest' ? TRIM_CHUNK : 0);
  const dropped = end === 'oldest' ? room.messages.splice(0, over) : room.messages.splice(-over);
  for (const entry of dropped) {
    room.byId.delete(entry.id);
    if (entry.node) room.gone.push(entry.node);
    entry.node = null;
  }
  if (end === 'oldest') {
    room.olderMore = true;
    room.shifted = true;
  } else {
    room.live = false;
  }
}

// Follow the newest messages again (the window is live).
export function followBottom(room) {
  room.following = true;
  room.unseen = 0;
  scheduleRender();
}

// Mark the search result `id` (null: none) and bring it into view at the next redraw.
export function reveal(room, id) {
  const old = room.highlight !== null ? room.byId.get(room.highlight) : null;
  if (old && old.node) old.node.classList.remove('hit');
  room.highlight = id;
  room.reveal = id;
  const entry = id !== null ? room.byId.get(id) : null;
  if (entry && entry.node) entry.node.classList.add('hit');
  if (id !== null) room.following = false;
  scheduleRender();
}

// ---------------------------------------------------------------------------------------------
// The list

export function scheduleRender() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  const room = activeRoom();
  for (const other of state.rooms.values()) if (other !== room) other.gone = [];
  if (!room) return;
  if (room.rebuild) {
    renderList();
    return;
  }
  const list = ui.messages;
  // Messages added or removed above what the person reads would move it: note where the first
  // message in view is, and put it back there afterwards.
  let anchor = null;
  let anchorTop = 0;
  if (!room.following && room.shifted && room.reveal === null) {
    anchor = firstInView(room);
    if (anchor) anchorTop = anchor.getBoundingClientRect().top;
  }
  for (const node of room.gone) node.remove();
  room.gone = [];
  let run = null; // consecutive messages without a node yet, added as one fragment
  for (const entry of room.messages) {
    if (entry.node && entry.node.parentNode === list) {
      if (run) list.insertBefore(run, entry.node);
      run = null;
    } else {
      if (!run) run = document.createDocumentFragment();
      run.append(decorated(room, entry));
    }
  }
  if (run) list.insertBefore(run, firstPending(room));
  room.shifted = false;
  renderEdges(room);
  place(room, anchor, anchorTop);
  renderJump(room);
  afterRender(room);
}

// The whole list again: another tab was opened, or the window was replaced.
export function renderList() {
  const room = activeRoom();
  if (room && room === shown && room.scrollTop === null && !room.following && !room.rebuild) {
    room.scrollTop = ui.messages.scrollTop; // the same room drawn again: stay where it was
  }
  shown = room;
  const nodes = [];
  if (room) {
    for (const entry of room.messages) nodes.push(decorated(room, entry));
    for (const item of room.outbox) nodes.push(outboxNode(item));
    room.rebuild = false;
    room.gone = [];
    room.shifted = false;
  }
  ui.messages.replaceChildren(ui.edge, ...nodes);
  if (!room) {
    ui.edge.textContent = '';
    ui.empty.hidden = true;
    ui.jump.hidden = true;
    return;
  }
  renderEdges(room);
  if (room.scrollTop !== null) {
    ui.messages.scrollTop = room.scrollTop;
    room.scrollTop = null;
  } else {
    place(room, null, 0);
  }
  renderJump(room);
  afterRender(room);
}

function decorated(room, entry) {
  const node = messageNode(entry);
  node.classList.toggle('hit', entry.id === room.highlight);
  return node;
}

function firstPending(room) {
  const item = room.outbox.find((i) => i.node && i.node.parentNode === ui.messages);
  return item ? item.node : null;
}

function firstInView(room) {
  const top = ui.messages.getBoundingClientRect().top;
  for (const entry of room.messages) {
    const node = entry.node;
    if (!node || node.parentNode !== ui.messages) continue;
    if (node.getBoundingClientRect().bottom > top) return node;
  }
  return null;
}

function place(room, anchor, anchorTop) {
  const list = ui.messages;
  if (room.reveal !== null) {
    const entry = room.byId.get(room.reveal);
    room.reveal = null;
    if (entry && entry.node) {
      entry.node.scrollIntoView({ block: 'center' });
      return;
    }
  }
  if (room.following) {
    list.scrollTop = list.scrollHeight;
  } else if (anchor && anchor.parentNode === list) {
    const moved = anchor.getBoundingClientRect().top - anchorTop;
    if (moved) list.scrollTop += moved;
  }
}

// The edge above the first message: "Loading older messages…" while an older page is on its
// way, "The beginning of #room" once nothing older is kept. The empty room's note.
function renderEdges(room) {
  let text = '';
  if (room.loading && room.loading.kind === 'older') text = 'Loading older messages…';
  else if (room.welcomed && !room.olderMore && room.messages.length) {
    text = `The beginning of #${room.name}`;
  }
  if (ui.edge.textContent !== text) ui.edge.textContent = text;
  if (ui.messages.firstChild !== ui.edge) ui.messages.prepend(ui.edge);
  ui.empty.hidden = !(room.welcomed && room.messages.length === 0 && room.outbox.length === 0);
}

function renderJump(room) {
  ui.jump.hidden = room.following;
  // Past the window's end the count would be short of what is there: no count then.
  const text = room.live && room.unseen > 0 ? `${room.unseen} new ↓` : 'Jump to latest ↓';
  if (ui.jump.textContent !== text) ui.jump.textContent = text;
}

// The list was scrolled (by the person or by us): following is being at the bottom of a live
// window.
export function onListScroll() {
  const room = activeRoom();
  if (!room) return;
  const following = room.live && nearBottom();
  if (following === room.following) return;
  room.following = following;
  if (following) room.unseen = 0;
  renderJump(room);
}

// Remember where the list was before another tab is shown.
export function leaveList(room) {
  room.scrollTop = room.following ? null : ui.messages.scrollTop;
}

// Scroll to the bottom now (the person sent a message or asked for the latest).
export function scrollToBottom() {
  const room = activeRoom();
  ui.messages.scrollTop = ui.messages.scrollHeight;
  if (room && room.live) followBottom(room);
}

export function removeOutboxItem(room, item) {
  room.outbox.splice(room.outbox.indexOf(item), 1);
  if (item.node) item.node.remove();
  if (room === activeRoom()) {
    ui.empty.hidden = !(room.welcomed && room.messages.length === 0 && room.outbox.length === 0);
  }
}
