-- wschat history, schema version 2: what --history-ttl and --max-history-rooms need.
-- The TTL sweep deletes the oldest messages first, a small batch at a time.
CREATE INDEX messages_ts ON messages (ts);

-- The highest id of any room the sweeps have forgotten. A room that comes back counts on
-- from there, so that a client's old `since` is never answered with another history's ids.
CREATE TABLE forgotten (high_id INTEGER NOT NULL);
INSERT INTO forgotten (high_id) VALUES (0);
