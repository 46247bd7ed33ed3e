// A room's history beyond its window (protocol.md, `history`): older pages as the person
// scrolls up, newer ones as they scroll back down towards the live end, the newest page for
// "jump to latest", and the page around a search result. A `page` does not say which request it
// answers, so a room has one on its way at a time (room.loading); a jump or a result asked for
// meanwhile waits in room.queued, and the answer it overtakes is dropped.

import { send } from './connection.js';
import { ui } from './dom.js';
import { takeAwaiting } from './session.js';
import { activeRoom, isMessage, state } from './state.js';
import {
  appendNewer,
  followBottom,
  prependOlder,
  reveal,
  scheduleRender,
  scrollToBottom,
  setWindow,
} from './timeline.js';
import { showError } from './views.js';

// Messages per page: five pages fill the window.
const PAGE_LIMIT = 100;
// Messages shown on each side of a search result opened in its context.
const CONTEXT_LIMIT = 25;
// Closer than this many screens to an end of the list asks for the page beyond it.
const NEAR_END_SCREENS = 1;
// A page refused for passing trouble (rate_limited, the store out of reach) is asked again.
const RETRY_MS = 2000;
const PASSING = new Set(['rate_limited', 'unavailable', 'storage_unavailable']);

function ask(room, kind, fields, extra = {}) {
  if (room.joinState !== 'joined') return false;
  if (room.loading) {
    if (kind === 'latest' || kind === 'around') {
      room.queued = { kind, fields, extra };
      room.loading.stale = true;
    }
    return false;
  }
  if (!send({ type: 'history', room: room.name, ...fields })) return false;
  room.loading = { kind, fields, ...extra, stale: false };
  state.awaiting.push({ kind: 'history', room: room.name });
  scheduleRender(); // "Loading older messages…"
  return true;
}

// After each redraw and scroll of the open room: near an end of the list whose messages go on
// beyond the window, ask for the next page there.
export function loadNearEnds(room) {
  if (room !== activeRoom() || room.loading || room.joinState !== 'joined') return;
  if (!room.messages.length) return;
  const list = ui.messages;
  const margin = list.clientHeight * NEAR_END_SCREENS;
  if (room.olderMore && list.scrollTop < margin) {
    ask(room, 'older', { before: room.messages[0].id, limit: PAGE_LIMIT });
  } else if (!room.live && list.scrollHeight - list.scrollTop - list.clientHeight < margin) {
    ask(room, 'newer', { after: room.messages[room.messages.length - 1].id, limit: PAGE_LIMIT });
  }
}

export function onScroll() {
  const room = activeRoom();
  if (room) loadNearEnds(room);
}

// "Jump to latest": the bottom of a live window at once, else the newest page.
export function jumpToLatest(room) {
  if (room.highlight !== null) reveal(room, null);
  if (room.live) {
    scrollToBottom();
    followBottom(room);
    return;
  }
  ask(room, 'latest', { limit: PAGE_LIMIT });
}

// A search result in its context: the messages around it, it marked and in view.
export function openContext(room, id) {
  if (room.byId.has(id)) {
    reveal(room, id);
    return;
  }
  ask(room, 'around', { before: id + 1, limit: CONTEXT_LIMIT + 1 }, { id });
}

export function onPage(frame) {
  takeAwaiting('history', frame.room);
  const room = state.rooms.get(frame.room);
  if (!room || !room.loading) return;
  const request = room.loading;
  room.loading = null;
  const messages = Array.isArray(frame.messages) ? frame.messages.filter(isMessage) : [];
  if (!request.stale) apply(room, request, messages, frame.more === true);
  askQueued(room);
  scheduleRender();
}

function apply(room, request, messages, more) {
  switch (request.kind) {
    case 'older':
      prependOlder(room, messages, more);
      break;
    case 'newer':
      appendNewer(room, messages, more);
      break;
    case 'latest':
      setWindow(room, messages, { olderMore: more, live: true });
      followBottom(room);
      break;
    case 'around':
      // The result and those before it; then those after it.
      ask(room, 'after', { after: request.id, limit: CONTEXT_LIMIT }, {
        id: request.id, older: messages, olderMore: more,
      });
      break;
    case 'after':
      setWindow(room, request.older.concat(messages), { olderMore: request.olderMore, live: !more });
      reveal(room, request.id);
      break;
    default:
      break;
  }
}

function askQueued(room) {
  const queued = room.queued;
  if (!queued || room.loading) return;
  room.queued = null;
  ask(room, queued.kind, queued.fields, queued.extra);
}

// A `history` was refused (the error's ref is null: state.awaiting said it was this one).
export function onHistoryError(roomName, code, text) {
  const room = state.rooms.get(roomName);
  if (!room || !room.loading) return;
  const request = room.loading;
  room.loading = null;
  scheduleRender();
  if (PASSING.has(code)) {
    // Ask again later; scrolling asks for older and newer pages by itself.
    const { kind, fields, stale, ...extra } = request;
    const scrolled = kind === 'older' || kind === 'newer'; // scrolling asks for these again
    if (!scrolled && !stale && !room.queued) room.queued = { kind, fields, extra };
    setTimeout(() => {
      askQueued(room);
      loadNearEnds(room);
    }, RETRY_MS);
    return;
  }
  askQueued(room);
  showError(`#${room.name}: ${text}`);
}
