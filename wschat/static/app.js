// wschat browser client: plain JavaScript modules and the native WebSocket API, no build step
// (protocol: docs/protocol.md). This module wires the others to the page and starts the client:
//   state.js       what the page knows (rooms, their windows of messages, outboxes, identity)
//   timeline.js    a room's window of messages and the list that shows it, redrawn once a frame;
//                  items.js its items (delivered and pending messages)
//   history.js     older and newer pages of a room, "jump to latest", a result in its context
//   search.js      the search box and its results
//   views.js       rendering the rest; dom.js the elements and the text-only way into them
//   connection.js  the WebSocket, its close codes and reconnecting with backoff
//   session.js     what a connection says: sign in, join with since/token, send the outbox
//   frames.js      what the server says, one handler per frame type; members.js the member list
//   rooms.js       the tabs; composer.js typing, sending, retrying and the name dialog
//   auth.js        /config.json and where a token comes from; limits.js the server's limits
//
// Rules the client keeps:
// - every user-provided string reaches the page through textContent or an attribute, never innerHTML;
// - a message is shown once per (room, id), in id order, whatever mix of history, live messages,
//   acks and reconnects delivers it;
// - the page holds at most MAX_WINDOW messages of a room, however long it stays open: older
//   and newer ones come back from the server's history as the person scrolls;
// - nothing typed is silently lost: a message waits in the room's outbox (shown as pending) until the
//   server acks it, is resent after a reconnect with the same `ref` (the server dedupes by ref), and
//   is marked "not sent" when the server refuses it;
// - a signed-in page (protocol.md, "Signed identities") sends its token only inside the WebSocket,
//   gets it from the application's --client-token-url or the URL fragment #token=…, and refreshes
//   it before it expires.

import { loadConfig, signedMode, takeFragmentToken } from './auth.js';
import { bindComposer } from './composer.js';
import { clearRetry, connect, isOpen, reconnectNow, setHandlers } from './connection.js';
import { ui } from './dom.js';
import { handleFrame } from './frames.js';
import { jumpToLatest, loadNearEnds, onScroll } from './history.js';
import { nameProblem } from './limits.js';
import { requestPage } from './members.js';
import { bindTabs, DEFAULT_ROOM, openRoom, roomFromUrl } from './rooms.js';
import { bindSearch } from './search.js';
import { onClosed, onOpen } from './session.js';
import { activeRoom, state } from './state.js';
import { onListScroll, setAfterRender } from './timeline.js';
import { askName, renderMe, setConn } from './views.js';

function init() {
  setHandlers({ open: onOpen, frame: handleFrame, closed: onClosed });
  bindTabs();
  bindComposer();
  bindSearch();
  setAfterRender(loadNearEnds);
  ui.roomForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = ui.roomInput.value.trim().replace(/^#/, '');
    if (!name) return;
    if (openRoom(name, { focus: true })) ui.roomInput.value = '';
  });
  ui.me.addEventListener('click', () => {
    if (!state.auth.signed) askName('');
  });
  ui.reconnectNow.addEventListener('click', reconnectNow);
  ui.jump.addEventListener('click', () => {
    const room = activeRoom();
    if (room) jumpToLatest(room);
    ui.input.focus();
  });
  ui.messages.addEventListener('scroll', () => {
    onListScroll();
    onScroll();
  }, { passive: true });
  window.addEventListener('hashchange', () => {
    if (location.hash.startsWith('#/')) openRoom(roomFromUrl());
  });
  document.querySelector('.skip-link').addEventListener('click', (event) => {
    event.preventDefault(); // keep the room in the URL
    ui.input.focus();
  });
  window.addEventListener('online', () => {
    if (!state.ws && !state.stayAway) reconnectNow();
  });
  document.addEventListener('visibilitychange', () => {
    // Background tabs have their timers throttled: don't make a returning person wait it out.
    if (document.visibilityState === 'visible' && state.retryTimer) reconnectNow();
  });
  window.addEventListener('offline', () => {
    if (!isOpen()) {
      clearRetry();
      setConn('offline');
    }
  });
  window.addEventListener('beforeunload', (event) => {
    const unsent = [...state.rooms.values()].some((room) => room.outbox.length > 0);
    if (unsent) event.preventDefault(); // the browser asks before unsent messages are lost
  });
  ui.people.addEventListener('toggle', () => {
    const room = activeRoom();
    if (ui.people.open && room && room.users === null && !room.paged.length) requestPage(room);
  });
  ui.usersMore.addEventListener('click', () => {
    const room = activeRoom();
    if (room && room.users === null) requestPage(room);
  });
  const wide = window.matchMedia('(min-width: 760px)');
  ui.people.open = wide.matches;
  wide.addEventListener('change', () => {
    ui.people.open = wide.matches;
  });

  state.auth.jwt = takeFragmentToken();
  const first = roomFromUrl();
  if (!openRoom(first)) openRoom(DEFAULT_ROOM);
  loadConfig().then(start);
}

function start() {
  if (signedMode()) {
    renderMe();
    connect();
    return;
  }
  if (state.auth.mode === 'required') {
    setConn('offline', 'offline: sign in to the application to chat');
    return;
  }
  renderMe();
  if (state.name && !nameProblem(state.name)) {
    connect();
  } else {
    state.name = '';
    setConn('offline', 'offline: choose a name');
    askName('');
  }
}

init();
