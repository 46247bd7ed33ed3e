// Rendering the page around the message list (timeline.js): the tabs, the member panel, the
// status line, the name chip and the error line, all from `state`. Nothing here sends; the
// buttons it draws are handled by delegated listeners (rooms.js, composer.js).

import { el, ui } from './dom.js';
import { activeRoom, me, state } from './state.js';
import { renderList } from './timeline.js';

export function renderAll() {
  renderTabs();
  renderRoom();
  renderUsers();
  renderStatus();
  renderTitle();
}

export function renderRoom() {
  const room = activeRoom();
  renderList();
  ui.messages.setAttribute('aria-label', room ? `Messages in #${room.name}` : 'Messages');
  ui.input.placeholder = room ? `Message #${room.name}` : 'Join a room first';
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
