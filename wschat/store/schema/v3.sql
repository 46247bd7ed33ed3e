-- wschat history, schema version 3: who sent a message when the server knew (issue 14).
-- user: the `sub` of a signed sender (NULL in the open chat); guest: 1 for a guest's message
-- under --auth optional.
ALTER TABLE messages ADD COLUMN user TEXT;
ALTER TABLE messages ADD COLUMN guest INTEGER NOT NULL DEFAULT 0;
