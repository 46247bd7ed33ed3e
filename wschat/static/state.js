// What the page knows: the connection's state, the signed-in identity and the rooms, each with
// its messages in id order and its outbox. The other modules read and change this one object;
// nothing here touches the page.

const NAME_STORAGE_KEY = 'wschat.name';

function loadName() {
  try {
    return localStorage.getItem(NAME_STORAGE_KEY) || '';
  } catch {
    return ''; // storage disabled: ask every time
  }
}

export function saveName(name) {
  try {
    localStorage.setItem(NAME_STORAGE_KEY, name);
  } catch {
    // storage disabled: the name lasts for this page only
  }
}

export const state = {
  name: loadName(),
  token: null, // from the last welcome: lets a reconnect take our name over (protocol.md, join)
  ws: null,
  conn: 'connecting', // connecting | online | reconnecting | offline
  attempt: 0,
  retryTimer: 0,
  retryAt: 0,
  countdownTimer: 0,
  stayAway: false, // the server closed us with a code that says not to reconnect by ourselves
  limits: { rate: 5, burst: 20 }, // the server's --rate and --burst (/config.json)
  rooms: new Map(), // room name -> Room, in tab order
  active: null,
  // Joins and leaves carry no ref, so an error with ref null answers the oldest of them: the
  // server answers one connection's requests in order.
  awaiting: [],
  // The name the server gave this connection (welcome, authed): a guest's ends in " (guest)".
  self: '',
  auth: {
    mode: 'off', // off | optional | required: from /config.json
    tokenUrl: null, // the application's endpoint for a token, fetched with its cookies
    jwt: null, // the token to sign in with (never put in a URL: protocol.md)
    signed: null, // {name, user, admin} once authed
    signing: false, // the connection's auth is on its way
    retried: false, // one fresh token after a refusal, then give up
    refreshTimer: 0,
  },
};

export function me() {
  return state.self || state.name;
}

export function makeRoom(name) {
  return {
    name,
    // The window (timeline.js): at most MAX_WINDOW messages, a run of the room's history in id
    // order with nothing missing inside it.
    messages: [],
    byId: new Map(),
    lastId: null, // the highest id seen, in the window or not: `since` when rejoining
    epoch: null, // which history lastId counts in (servers on Redis send it)
    olderMore: true, // older messages than the window's first may be kept: scrolling up asks
    live: true, // the window reaches the newest message, so live messages join it
    following: true, // the list shows its bottom and keeps it in view as messages come
    unseen: 0, // messages that came while the list was not following: the jump button says so
    highlight: null, // the id of the search result opened in its context
    reveal: null, // an id to scroll into view at the next redraw
    shifted: false, // the next redraw adds or removes messages above the reading position
    rebuild: false, // the window was replaced: the next redraw draws the whole list
    gone: [], // nodes of messages that left the window, removed at the next redraw
    loading: null, // the `history` request on its way (history.js): one per room at a time
    queued: null, // the request to make once that one is answered
    arrived: [], // the last live messages: a page that ends at the newest takes those after it
    search: { q: '', results: [], next: null, loading: false, done: false, note: '', open: false },
    welcomed: false,
    joinState: 'idle', // idle | joining | joined | error
    // The member list while the server sends it (rooms up to its member-list limit); null
    // in a bigger room, where `count` is kept and the panel pages through `who` (paged).
    users: new Set(),
    count: 0,
    paged: [],
    next: null, // the `after` of the next page; null when every page is loaded
    pagedAll: false,
    paging: false, // a page was asked for and has not come yet
    listing: false, // re-reading the whole list with `who` (the room came under the limit)
    outbox: [], // {ref, text, state: queued|sending|failed, error, sentAt, node}
    unread: 0,
    scrollTop: null, // remembered while another tab is shown; null = follow the bottom
  };
}

export function activeRoom() {
  return state.active ? state.rooms.get(state.active) || null : null;
}

// The room whose outbox holds this item (null once it was closed).
export function roomOf(item) {
  return [...state.rooms.values()].find((r) => r.outbox.includes(item)) || null;
}

// What the page keeps of a message; `node` is its list item once drawn (items.js).
export function entryOf(message) {
  return {
    id: message.id,
    name: message.name,
    text: message.text,
    ts: message.ts,
    user: typeof message.user === 'string' ? message.user : null,
    guest: message.guest === true,
    node: null,
  };
}

// Files a message under its id, keeping room.messages in id order. Returns the new entry, or
// null for an id already there.
export function storeMessage(room, message) {
  if (room.byId.has(message.id)) return null;
  const entry = entryOf(message);
  room.byId.set(entry.id, entry);
  const list = room.messages;
  let i = list.length;
  while (i > 0 && list[i - 1].id > entry.id) i -= 1;
  list.splice(i, 0, entry);
  noteId(room, entry.id);
  return entry;
}

// A frame's message has what the page needs to show it.
export function isMessage(m) {
  return m && Number.isInteger(m.id) && typeof m.text === 'string' && typeof m.name === 'string';
}

// A message of the room was seen (in the window or not). Returns whether it is newer than all
// seen before.
export function noteId(room, id) {
  if (room.lastId !== null && id <= room.lastId) return false;
  room.lastId = id;
  return true;
}
