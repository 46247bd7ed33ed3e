-- wschat history, schema version 1.
-- Ids are assigned by the server, strictly increasing per room; WITHOUT ROWID keeps
-- each room's messages together in primary-key order.
CREATE TABLE messages (
    room TEXT NOT NULL,
    id INTEGER NOT NULL,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    ts TEXT NOT NULL,
    ref TEXT,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;

-- The idempotency lookup of `say` with a `ref`.
CREATE INDEX messages_ref ON messages (room, name, ref) WHERE ref IS NOT NULL;
