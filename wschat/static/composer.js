// Typing and sending. Nothing typed is silently lost: a message waits in its room's outbox,
// shown as pending, until the server acks it (session.js resends it after a reconnect with the
// same ref), and one the server refuses stays as "not sent" with Retry and Discard. The name
// dialog's answer is handled here too: a new name needs a new connection.

import { ui } from './dom.js';
import { dropSocket, isOpen, reconnectNow } from './connection.js';
import { charCount, MAX_TEXT_CHARS, nameProblem } from './limits.js';
import { jumpToLatest } from './history.js';
import { outboxNode, renderOutboxItem } from './items.js';
import { flushOutbox } from './session.js';
import { activeRoom, roomOf, saveName, state } from './state.js';
import { removeOutboxItem, scrollToBottom } from './timeline.js';
import { clearError, renderMe, renderRoom, showError } from './views.js';

const MAX_INPUT_HEIGHT_PX = 160;

function newRef() {
  // randomUUID exists only in secure contexts (https, localhost); plain http on a LAN address
  // still has getRandomValues.
  if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (window.crypto && typeof crypto.getRandomValues === 'function') {
    crypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function submitMessage() {
  const text = ui.input.value;
  const room = activeRoom();
  if (!room) {
    showError('Join a room first.');
    return;
  }
  if (!text.trim()) {
    showError('Type a message first.');
    return;
  }
  const length = charCount(text);
  if (length > MAX_TEXT_CHARS) {
    showError(`Too long: ${length} characters, at most ${MAX_TEXT_CHARS}.`);
    return;
  }
  clearError();
  // Sent from far back in the history: back to the newest messages, where it will show.
  if (!room.live || room.highlight !== null) jumpToLatest(room);
  const item = { ref: newRef(), text, state: 'queued', error: '', sentAt: 0, node: null };
  room.outbox.push(item);
  ui.messages.append(outboxNode(item));
  ui.empty.hidden = true;
  ui.input.value = '';
  autosize();
  flushOutbox();
  scrollToBottom();
}

function autosize() {
  ui.input.style.height = 'auto';
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, MAX_INPUT_HEIGHT_PX)}px`;
}

function outboxItem(ref) {
  for (const room of state.rooms.values()) {
    const item = room.outbox.find((i) => i.ref === ref);
    if (item) return item;
  }
  return null;
}

function retryItem(item) {
  const room = roomOf(item);
  if (!room) return;
  item.state = 'queued';
  item.error = '';
  renderOutboxItem(item);
  flushOutbox();
  ui.input.focus();
}

function discardItem(item) {
  const room = roomOf(item);
  if (room) removeOutboxItem(room, item);
  ui.input.focus();
}

function onNameSubmit(event) {
  event.preventDefault();
  const name = ui.nameInput.value;
  const problem = nameProblem(name);
  if (problem) {
    ui.nameError.textContent = problem;
    ui.nameInput.focus();
    return;
  }
  ui.nameError.textContent = '';
  ui.nameDialog.close();
  const changed = name !== state.name;
  saveName(name);
  state.name = name;
  renderMe();
  const failed = [...state.rooms.values()].some((room) => room.joinState === 'error');
  if (changed || failed || !isOpen()) {
    // A connection has one name in all its rooms: a new name needs a new connection.
    clearError();
    state.token = null;
    for (const room of state.rooms.values()) {
      for (const m of room.messages) m.node = null; // "own" marks follow the name
      for (const item of room.outbox) {
        if (item.node) item.node.remove();
        item.node = null;
      }
    }
    renderRoom();
    dropSocket();
    reconnectNow();
  }
  ui.input.focus();
}

export function bindComposer() {
  ui.composer.addEventListener('submit', (event) => {
    event.preventDefault();
    submitMessage();
  });
  ui.input.addEventListener('keydown', (event) => {
    // Enter sends, Shift+Enter is a newline; never while an IME is composing.
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submitMessage();
    }
  });
  ui.input.addEventListener('input', () => {
    autosize();
    if (ui.error.textContent) clearError();
  });
  // The Retry and Discard buttons of every pending message (views.js draws them).
  ui.messages.addEventListener('click', (event) => {
    const button = event.target.closest('button.retry, button.discard');
    const item = button ? outboxItem(button.closest('li').dataset.ref) : null;
    if (!item) return;
    if (button.classList.contains('retry')) retryItem(item);
    else discardItem(item);
  });
  ui.nameForm.addEventListener('submit', onNameSubmit);
  ui.nameDialog.addEventListener('cancel', (event) => {
    if (!state.name) event.preventDefault(); // nothing works without a name
  });
}
