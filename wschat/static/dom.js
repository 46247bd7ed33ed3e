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
