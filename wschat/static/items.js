// The items of the message list: a delivered message (numbered by the server) and a pending one
// of the outbox, with its Retry and Discard buttons (composer.js handles them by data-ref).
// Each node is built once and kept on its entry; timeline.js decides where it goes.

import { el, setTime, textBlock } from './dom.js';
import { me, state } from './state.js';

const OUTBOX_NOTE = { queued: 'Waiting for connection…', sending: 'Sending…', failed: 'Not sent' };

export function messageNode(entry) {
  if (entry.node) return entry.node;
  const own = entry.name === me();
  const li = el('li', own ? 'msg own' : 'msg');
  li.dataset.id = String(entry.id);
  li.dataset.name = entry.name;
  const meta = el('div', 'meta');
  // Every name and text in its own bidi isolate: right-to-left letters or bidi controls in
  // one can never reorder what is shown around it (the sender, the time, another message).
  meta.append(authorNode(entry));
  if (own) meta.append(el('span', 'visually-hidden', ' (you)'));
  const time = el('time');
  setTime(time, entry.ts);
  meta.append(' ', time);
  li.append(meta, textBlock(entry.text));
  entry.node = li;
  return li;
}

// The sender's name, marked as signed by the application or as a guest's.
export function authorNode(entry) {
  const author = el('bdi', 'author', entry.name);
  if (entry.user) {
    // Signed by the application: two people with one display name differ by their user id.
    author.classList.add('signed');
    author.dataset.user = entry.user;
    author.title = `signed in as ${entry.user}`;
  } else if (entry.guest) {
    author.classList.add('guest');
    author.title = 'a guest: not signed in';
  }
  return author;
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
  li.append(meta, textBlock(item.text), actions);
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
