-- wschat history, schema version 2: what --history-ttl and --max-history-rooms need.
-- The highest id of any room the sweeps have forgotten. A room that comes back counts on
-- from there, so that a client's old `since` is never answered with another history's ids.
-- (The TTL's index on ts is made by the store when it starts with a TTL: only a server that
-- expires messages pays its write cost.)
CREATE TABLE forgotten (high_id INTEGER NOT NULL);
INSERT INTO forgotten (high_id) VALUES (0);
