// The open rooms as tabs: opening one (from the form, the URL's #/room or ?room=), switching
// between them with the mouse or the arrow keys, and leaving one.

import { ui } from './dom.js';
import { isOpen } from './connection.js';
import { ROOM_RE } from './limits.js';
import { requestPage } from './members.js';
import { showRoomSearch } from './search.js';
import { sendJoin, sendLeave } from './session.js';
import { activeRoom, makeRoom, state } from './state.js';
import { leaveList } from './timeline.js';
import { renderAll, renderTabs, showError } from './views.js';

export const DEFAULT_ROOM = 'lobby';

export function openRoom(name, { focus = false } = {}) {
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
  if (room.joinState === 'joined') sendLeave(name);
  state.rooms.delete(name);
  if (state.active === name) {
    const next = state.rooms.keys().next();
    state.active = null;
    if (!next.done) {
      setActive(next.value);
    } else {
      renderAll();
      showRoomSearch();
    }
  } else {
    renderTabs();
  }
}

function setActive(name) {
  const previous = activeRoom();
  if (previous) leaveList(previous);
  state.active = name;
  const room = activeRoom();
  room.unread = 0;
  if (room.joinState === 'error' && isOpen()) sendJoin(room); // try again, e.g. after room_full
  if (room.users === null && ui.people.open && !room.paged.length) requestPage(room);
  const hash = `#/${name}`;
  if (location.hash !== hash) history.replaceState(null, '', hash);
  renderAll();
  if (!previous || previous.name !== name) showRoomSearch();
}

export function roomFromUrl() {
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

// One listener for all tabs (views.js redraws them): a tab button selects its room, its close
// button leaves it, and the arrow keys move between tabs.
export function bindTabs() {
  ui.tabs.addEventListener('click', (event) => {
    const button = event.target.closest('button');
    if (!button) return;
    const name = button.closest('li').dataset.room;
    if (button.classList.contains('tab-close')) closeRoom(name);
    else setActive(name);
  });
  ui.tabs.addEventListener('keydown', (event) => {
    if (event.target.closest('button.tab-button')) onTabKey(event);
  });
}
