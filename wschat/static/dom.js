// The page's elements by role, and el(), which puts text in through textContent (never
// innerHTML), so that every user-provided string stays text.

const $ = (id) => document.getElementById(id);

export const ui = {
  status: $('status'),
  reconnectNow: $('reconnect-now'),
  me: $('me'),
  meName: $('me-name'),
  tabs: $('rooms'),
  roomForm: $('room-form'),
  roomInput: $('room-input'),
  messages: $('messages'),
  empty: $('empty'),
  jump: $('jump'),
  // The list's first item, always there and of one height, so that what it says changes
  // nothing below it: "Loading older messages…", "The beginning of #room", or nothing.
  edge: el('li', 'edge'),
  searchForm: $('search-form'),
  searchInput: $('search-input'),
  searchPanel: $('search-panel'),
  searchNote: $('search-note'),
  searchResults: $('search-results'),
  searchMore: $('search-more'),
  searchClose: $('search-close'),
  people: $('people'),
  users: $('users'),
  userCount: $('user-count'),
  usersNote: $('users-note'),
  usersMore: $('users-more'),
  composer: $('composer'),
  input: $('input'),
  error: $('error'),
  nameDialog: $('name-dialog'),
  nameForm: $('name-form'),
  nameInput: $('name-input'),
  nameError: $('name-error'),
};

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// A message's text: in its own bidi isolate (dir=auto), so that right-to-left letters or bidi
// controls in it can never reorder what is shown around it.
export function textBlock(text) {
  const p = el('p', 'text', text);
  p.dir = 'auto';
  return p;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });

export function setTime(timeEl, ts) {
  const date = new Date(ts);
  if (Number.isNaN(date.getTime())) {
    timeEl.textContent = '';
    return;
  }
  timeEl.dateTime = date.toISOString();
  timeEl.textContent = timeFormat.format(date);
  timeEl.title = fullFormat.format(date);
}
