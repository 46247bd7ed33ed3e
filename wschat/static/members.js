// Who is in a room. Up to the server's member-list limit the welcome's list is kept up to date
// by presence batches; in a bigger room only the count is kept, and the panel pages through
// `who` on demand.

import { send } from './connection.js';
import { activeRoom } from './state.js';
import { renderUsers } from './views.js';

const WHO_PAGE = 200; // names per page of the member panel in a big room
const WHO_MAX_LIMIT = 1000;

// Presence comes in batches (protocol.md): add `joined`, remove `left`. A batch without
// them means the room is over the server's member-list limit: only the count is kept.
export function onPresence(room, frame) {
  if (Number.isInteger(frame.count)) room.count = frame.count;
  if (!Array.isArray(frame.joined) || !Array.isArray(frame.left)) {
    if (room.users !== null) {
      room.users = null;
      resetPages(room);
    }
  } else if (room.users === null) {
    // Back under the limit: read the whole list again; later batches apply on top of it.
    if (!room.listing) {
      room.listing = true;
      room.paged = [];
      send({ type: 'who', room: room.name, limit: WHO_MAX_LIMIT });
    }
  } else {
    for (const name of frame.joined) room.users.add(name);
    for (const name of frame.left) room.users.delete(name);
  }
  if (room === activeRoom()) renderUsers();
}

export function onMembers(room, frame) {
  if (!Array.isArray(frame.names)) return;
  if (Number.isInteger(frame.count)) room.count = frame.count;
  room.paged.push(...frame.names);
  room.next = typeof frame.next === 'string' ? frame.next : null;
  room.pagedAll = room.next === null;
  room.paging = false;
  if (room.listing) {
    if (room.next !== null) {
      send({ type: 'who', room: room.name, after: room.next, limit: WHO_MAX_LIMIT });
      return;
    }
    room.listing = false;
    room.users = new Set(room.paged);
    resetPages(room);
  }
  if (room === activeRoom()) renderUsers();
}

export function resetPages(room) {
  room.paged = [];
  room.next = null;
  room.pagedAll = false;
  room.paging = false;
}

export function requestPage(room) {
  if (room.paging || room.pagedAll) return;
  const frame = { type: 'who', room: room.name, limit: WHO_PAGE };
  if (room.next !== null) frame.after = room.next;
  room.paging = send(frame);
}
