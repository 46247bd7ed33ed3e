// Rendering: the tabs, the message list with its pending messages, the member panel, the
// status line, the name chip and the error line, all from `state`. Nothing here sends; the
// buttons it draws are handled by delegated listeners (rooms.js, composer.js).

import { el, setTime, ui } from './dom.js';
import { activeRoom, clearMessages, me, state, storeMessage } from './state.js';

// Closer than this to the bottom counts as "reading the newest messages": keep following.
const STICKY_BOTTOM_PX = 48;
const OUTBOX_NOTE = { queued: 'Waiting for connection…', sending: 'Sending…', failed: 'Not sent' };

export function nearBottom() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < STICKY_BOTTOM_PX;
}

export function scrollToBottom() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
  ui.jump.hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Message list

export function replaceMessages(room, history) {
  for (const m of room.messages) if (m.node) m.node.remove();
  clearMessages(room);
  const sorted = [...history].sort((a, b) => a.id - b.id);
  for (const message of sorted) upsertMessage(room, message);
}

export function upsertMessage(room, message) {
  const stored = storeMessage(room, message);
  if (stored === null) {
    // Same id again (history after a reconnect, or the broadcast after our ack): refresh only.
    const known = room.byId.get(message.id);
    known.ts = message.ts;
    if (known.node) setTime(known.node.querySelector('time'), known.ts);
    return;
  }
  if (room === activeRoom()) {
    const next = room.messages[stored.index + 1];
    const firstPending = room.outbox.find((item) => item.node && item.node.isConnected);
    const before = next && next.node && next.node.isConnected ? next.node : (firstPending ? firstPending.node : null);
    ui.messages.insertBefore(messageNode(stored.entry), before);
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
  // Every name and text in its own bidi isolate: right-to-left letters or bidi controls in
  // one can never reorder what is shown around it (the sender, the time, another message).
  const author = el('bdi', 'author', entry.name);
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
  li.append(meta, textNode(entry.text));
  entry.node = li;
  return li;
}

function textNode(text) {
  const p = el('p', 'text', text);
  p.dir = 'auto';
  return p;
}

// A pending message; its Retry and Discard buttons are found by its data-ref (composer.js).
export function outboxNode(item) {
  if (item.node) return item.node;
  const li = el('li', 'msg own pending');
  li.dataset.ref = item.ref;
  const meta = el('div', 'meta');
  meta.append(el('bdi', 'author', me()), el('span', 'visually-hidden', ' (you)'), ' ', el('span', 'note'));
  const actions = el('div', 'actions');
  const retry = el('button', 'link-button retry', 'Retry');
  retry.type = 'button';
  const discard = el('button', 'link-button discard', 'Discard');
  discard.type = 'button';
  actions.append(retry, discard);
  li.append(meta, textNode(item.text), actions);
  item.node = li;
  renderOutboxItem(item);
  return li;
}

export function renderOutboxItem(item) {
  const li = item.node;
  if (!li) return;
  li.dataset.state = item.state;
  li.classList.toggle('failed', item.state === 'failed');
  const note = item.state === 'failed' && item.error ? `Not sent: ${item.error}` : OUTBOX_NOTE[item.state];
  li.querySelector('.note').textContent = note;
  li.querySelector('.actions').hidden = item.state !== 'failed';
}

export function renderOutboxStates() {
  for (const room of state.rooms.values()) for (const item of room.outbox) renderOutboxItem(item);
}

export function removeOutboxItem(room, item) {
  room.outbox.splice(room.outbox.indexOf(item), 1);
  if (item.node) item.node.remove();
  ui.empty.hidden = !(room === activeRoom() && room.messages.length === 0 && room.outbox.length === 0);
}

// ---------------------------------------------------------------------------------------------
// The page around it

export function renderAll() {
  renderTabs();
  renderRoom();
  renderUsers();
  renderStatus();
  renderTitle();
}

export function renderRoom() {
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

// The tab button and its <li> carry data-room; rooms.js listens on the list.
export function renderTabs() {
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
    const close = el('button', 'tab-close', '×');
    close.type = 'button';
    close.setAttribute('aria-label', `Leave #${room.name}`);
    close.title = `Leave #${room.name}`;
    li.append(tab, close);
    items.push(li);
  }
  ui.tabs.replaceChildren(...items);
}

export function renderUsers() {
  const room = activeRoom();
  const big = room !== null && room.users === null;
  const names = !room ? [] : big ? room.paged : [...room.users].sort();
  const items = names.map((name) => {
    const li = el('li', name === me() ? 'user own' : 'user');
    li.dataset.name = name;
    li.append(el('span', 'dot'), el('bdi', 'user-name', name));
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

export function setConn(conn, text) {
  state.conn = conn;
  state.connText = text || '';
  if (conn !== 'reconnecting') clearInterval(state.countdownTimer);
  renderStatus();
}

export function renderStatus() {
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

export function renderTitle() {
  let unread = 0;
  for (const room of state.rooms.values()) unread += room.unread;
  document.title = unread > 0 ? `(${unread}) wschat` : state.active ? `#${state.active} · wschat` : 'wschat';
}

export function renderMe() {
  const signed = state.auth.signed;
  ui.meName.textContent = me();
  ui.me.hidden = !me();
  // A signed name is the application's: it cannot be changed here.
  ui.me.disabled = signed !== null;
  ui.me.dataset.signed = String(signed !== null);
  ui.me.title = signed ? `Signed in as ${signed.user}` : 'Change your name';
  ui.me.setAttribute('aria-label', signed ? `Signed in as ${signed.name}` : 'Change your name');
}

// Errors go next to the input (never alert()).
export function showError(text) {
  ui.error.textContent = text;
}

export function clearError() {
  ui.error.textContent = '';
}

// The name dialog; composer.js handles its answer.
export function askName(problem) {
  ui.nameInput.value = state.name;
  ui.nameError.textContent = problem || '';
  if (!ui.nameDialog.open) ui.nameDialog.showModal();
  ui.nameInput.focus();
  ui.nameInput.select();
}
