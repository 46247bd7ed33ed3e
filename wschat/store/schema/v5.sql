-- wschat history, schema version 5: the history of record (issue 21). Messages are kept until
-- --history-keep, --history-ttl or --max-history-rooms removes them, so they get a search index,
-- and the `ref` idempotency window a table of its own, bounded in time rather than by the
-- history (store/index.py and store/sqlite.py say how each is used).

-- Each room with messages has a number: its index entries are the rowids (no << 36) | id.
-- indexed: the id up to which the room's messages are in the index and their refs in `refs`.
CREATE TABLE rooms (
    no INTEGER PRIMARY KEY,
    room TEXT NOT NULL UNIQUE,
    indexed INTEGER NOT NULL DEFAULT 0
);
INSERT INTO rooms (room) SELECT DISTINCT room FROM messages;

-- Contentless: the words of chat.search.indexed_text(messages.text), folded by Python and
-- separated by spaces, and no copy of the text. The ascii tokenizer splits them at the spaces
-- alone (ASCII letters, digits, `_` and every non-ASCII character are token characters), so
-- its tokens are the folded words whatever SQLite's own Unicode tables say. Prefixes of 1-6
-- characters are indexed for the query's last word (FTS5 reads an indexed prefix's entries
-- lazily, newest first; a longer one makes it gather every entry of every word it begins, in
-- every room); detail=none and columnsize=0: a search needs only which messages hold a word.
CREATE VIRTUAL TABLE search USING fts5(
    text,
    content = '',
    columnsize = 0,
    detail = none,
    prefix = '1 2 3 4 5 6',
    tokenize = "ascii tokenchars '_'"
);
-- The Unicode version (Python's unicodedata.unidata_version) the index was built with; the
-- store builds it again when it differs, as it does now for the messages already kept.
CREATE TABLE search_state (unicode TEXT NOT NULL);
INSERT INTO search_state (unicode) VALUES ('');

-- The refs of the last 24 hours' messages: a `say` with a ref found here (of a message still
-- kept) is a resend. Written in batches with the index (the refs of the messages kept before
-- are written by the store when it builds the index); swept every second, oldest first.
CREATE TABLE refs (
    room TEXT NOT NULL,
    name TEXT NOT NULL,
    application INTEGER NOT NULL,
    ref TEXT NOT NULL,
    id INTEGER NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (room, name, application, ref)
) WITHOUT ROWID;
CREATE INDEX refs_ts ON refs (ts);
-- Refs are looked up in `refs` now; the history's own index of them would grow with it.
DROP INDEX IF EXISTS messages_ref;
