// Searching the open room (protocol.md, `search`): the box above the list asks, the panel
// under it lists the results newest first with the words found marked, "More results" asks for
// the next page, and choosing a result opens it in its context (history.js). Each room keeps its
// own query and results; an answer to an older query than the room's current one is dropped.

import { send } from './connection.js';
import { el, setTime, ui } from './dom.js';
import { openContext } from './history.js';
import { authorNode } from './items.js';
import { takeAwaiting } from './session.js';
import { activeRoom, isMessage, state } from './state.js';

const SEARCH_LIMIT = 20;
// The server's rules for `q` (chat/search.py), checked here so that a mistake is explained at once.
const MAX_QUERY_CHARS = 200;
const MAX_QUERY_WORDS = 16;
// A word, as the server's `\w+` finds them: letters, digits, marks and `_`.
const WORD_RE = /[\p{L}\p{N}\p{M}_]+/gu;
const MARK_RE = /\p{M}/gu;

// Lower case without accents, as the server folds before it matches (`Résumé` -> `resume`).
function fold(text) {
  return text.normalize('NFKD').replace(MARK_RE, '').toLowerCase();
}

function words(text) {
  return fold(text).match(WORD_RE) || [];
}

function queryProblem(q) {
  if (!q) return 'Type what to search for.';
  if ([...q].length > MAX_QUERY_CHARS) return `At most ${MAX_QUERY_CHARS} characters.`;
  const found = words(q);
  if (!found.length) return 'Type at least one word (letters or digits).';
  if (found.length > MAX_QUERY_WORDS) return `At most ${MAX_QUERY_WORDS} words.`;
  return '';
}

function fresh(q) {
  return { q, results: [], next: null, loading: false, done: false, note: '', open: q !== '' };
}

function run(room, q) {
  const problem = queryProblem(q);
  room.search = fresh(q);
  if (problem) {
    room.search.note = problem;
    room.search.done = true;
  } else {
    ask(room);
  }
  renderSearch();
}

function ask(room) {
  const s = room.search;
  if (s.loading) return;
  if (room.joinState !== 'joined') {
    s.note = `Join #${room.name} to search it.`;
    return;
  }
  const frame = { type: 'search', room: room.name, q: s.q, limit: SEARCH_LIMIT };
  if (s.next !== null) frame.before = s.next;
  if (!send(frame)) {
    s.note = 'Offline: search when the connection is back.';
    return;
  }
  s.loading = true;
  s.note = 'Searching…';
  state.awaiting.push({ kind: 'search', room: room.name });
}

export function onResults(frame) {
  takeAwaiting('search', frame.room);
  const room = state.rooms.get(frame.room);
  if (!room || frame.q !== room.search.q) return;
  const s = room.search;
  s.loading = false;
  if (Array.isArray(frame.messages)) s.results.push(...frame.messages.filter(isMessage));
  s.next = Number.isInteger(frame.next) ? frame.next : null;
  s.done = s.next === null;
  const n = s.results.length;
  if (n === 0) s.note = 'No messages match.';
  else s.note = `${n}${s.done ? '' : '+'} ${n === 1 ? 'message matches' : 'messages match'}`;
  if (room === activeRoom()) renderSearch();
}

// A `search` was refused (the error's ref is null: state.awaiting said it was this one).
export function onSearchError(roomName, code, text) {
  const room = state.rooms.get(roomName);
  if (!room) return;
  const s = room.search;
  s.loading = false;
  if (code === 'search_unavailable') {
    // Servers keeping history in Redis alone have no index to search (protocol.md).
    s.note = 'Search is not available on this server.';
    s.done = true;
  } else if (code === 'rate_limited') {
    s.note = 'Too many requests: try again in a moment.';
  } else {
    s.note = `Not searched: ${text}`;
  }
  if (room === activeRoom()) renderSearch();
}

// The open room's search: its query in the box, its panel and results.
export function showRoomSearch() {
  const room = activeRoom();
  ui.searchInput.value = room ? room.search.q : '';
  ui.searchInput.placeholder = room ? `Search #${room.name}` : 'Search';
  ui.searchInput.disabled = !room;
  renderSearch();
}

function renderSearch() {
  const room = activeRoom();
  const s = room ? room.search : null;
  ui.searchPanel.hidden = !(s && s.open);
  if (!s || !s.open) return;
  ui.searchNote.textContent = s.note;
  const marked = words(s.q);
  const items = s.results.map((m) => resultNode(m, marked));
  ui.searchResults.replaceChildren(...items);
  ui.searchResults.hidden = !items.length;
  ui.searchMore.hidden = s.done || s.loading || !s.results.length;
}

function resultNode(message, marked) {
  const li = el('li');
  const button = el('button', 'result');
  button.type = 'button';
  button.dataset.id = String(message.id);
  const meta = el('span', 'meta');
  const time = el('time');
  setTime(time, message.ts);
  const author = authorNode({ name: message.name, user: message.user, guest: message.guest === true });
  meta.append(author, ' ', time);
  const text = el('span', 'text');
  text.dir = 'auto';
  text.append(markWords(message.text, marked));
  button.append(meta, text);
  li.append(button);
  return li;
}

// The text with the words of the query marked (the last one as a prefix), as text nodes and
// <mark> elements only: the text stays text.
function markWords(text, marked) {
  const whole = new Set(marked.slice(0, -1));
  const prefix = marked[marked.length - 1] || '';
  const out = document.createDocumentFragment();
  let at = 0;
  for (const match of text.matchAll(WORD_RE)) {
    const found = words(match[0]);
    if (!found.some((w) => whole.has(w) || (prefix && w.startsWith(prefix)))) continue;
    if (match.index > at) out.append(text.slice(at, match.index));
    out.append(el('mark', null, match[0]));
    at = match.index + match[0].length;
  }
  if (at < text.length) out.append(text.slice(at));
  return out;
}

function close() {
  const room = activeRoom();
  if (room) room.search.open = false;
  renderSearch();
}

export function bindSearch() {
  ui.searchForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const room = activeRoom();
    if (room) run(room, ui.searchInput.value.trim());
  });
  ui.searchInput.addEventListener('keydown', (event) => {
    // Escape empties a search box (the browser's own habit): the room's search ends with it.
    if (event.key !== 'Escape') return;
    const room = activeRoom();
    if (room) room.search = fresh('');
    renderSearch();
  });
  ui.searchInput.addEventListener('focus', () => {
    const room = activeRoom();
    if (room && room.search.q && !room.search.open) {
      room.search.open = true;
      renderSearch();
    }
  });
  ui.searchClose.addEventListener('click', close);
  ui.searchMore.addEventListener('click', () => {
    const room = activeRoom();
    if (!room) return;
    ask(room);
    renderSearch();
  });
  ui.searchResults.addEventListener('click', (event) => {
    const button = event.target.closest('button.result');
    const room = activeRoom();
    if (!button || !room) return;
    room.search.open = false;
    renderSearch();
    openContext(room, Number(button.dataset.id));
  });
}
