-- wschat history in PostgreSQL, schema version 1.
--
-- rooms: each room's last id. A node draws a room's next ids by updating this row in the
-- transaction that stores the messages, so ids are strictly increasing per room across every
-- node sharing the database, and a rolled-back transaction leaves no hole. The row is kept when
-- retention deletes a room's messages: ids never start over.
CREATE TABLE rooms (
    room text PRIMARY KEY,
    last_id bigint NOT NULL DEFAULT 0
);

-- messages: a room's events in id order. Today every event is a message (kind 'message');
-- edits, deletions and reactions will be events of their own kinds in the same id sequence,
-- `target` naming the message they change. A deletion overwrites the target's text and clears
-- its tsv, so that nothing of it stays readable or searchable.
CREATE TABLE messages (
    room text NOT NULL,
    id bigint NOT NULL,
    kind text NOT NULL DEFAULT 'message' CHECK (kind IN ('message')),
    target bigint,
    name text NOT NULL,
    text text NOT NULL,
    -- the server's ISO 8601 UTC time, as sent to clients
    ts text NOT NULL,
    ref text,
    -- the signed sender's sub; guest: a guest's message; application: published by the
    -- server API (its refs are apart from the clients')
    "user" text,
    guest boolean NOT NULL DEFAULT false,
    application boolean NOT NULL DEFAULT false,
    -- chat.search.indexed_text(text)'s words as lexemes (array_to_tsvector: no parser, no
    -- dictionary, so PostgreSQL indexes exactly the words Python folded)
    tsv tsvector,
    PRIMARY KEY (room, id)
);
CREATE INDEX messages_tsv ON messages USING gin (tsv);

-- refs: the idempotency window of `say` and of the API's publish. A ref is found again while
-- it is younger than the window (`at`, the storing node's clock in seconds); older ones are
-- deleted in batches, so this table holds about one window of refs however much is kept.
CREATE TABLE refs (
    room text NOT NULL,
    application boolean NOT NULL,
    name text NOT NULL,
    ref text NOT NULL,
    id bigint NOT NULL,
    at double precision NOT NULL,
    PRIMARY KEY (room, application, name, ref)
);
CREATE INDEX refs_at ON refs (at);

-- Store a batch of messages in one round trip (the app's group commit): each one gets its
-- room's next id, unless its ref is in the window (found stored, or earlier in this batch),
-- in which case the stored message comes back with fresh = false. `keep` > 0 deletes each
-- written room's messages older than its newest `keep` (a room may briefly keep a batch more).
-- Set-based: a statement per step whatever the batch's size (a loop of statements per message
-- costs about three times as much).
CREATE FUNCTION wschat_append(
    p_rooms text[], p_names text[], p_texts text[], p_words text[], p_ts text[],
    p_refs text[], p_users text[], p_guests boolean[], p_apps boolean[],
    p_now double precision, p_ref_since double precision, p_keep bigint
) RETURNS TABLE (
    ord bigint, id bigint, fresh boolean, text text, ts text, "user" text, guest boolean
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO rooms (room)
        SELECT DISTINCT b.room FROM unnest(p_rooms) AS b(room) ORDER BY 1
        ON CONFLICT DO NOTHING;
    -- Locked in one order by every node: two batches sharing rooms cannot deadlock, and the
    -- next statement sees whatever the previous holder committed.
    PERFORM 1 FROM rooms r WHERE r.room = ANY (p_rooms) ORDER BY r.room FOR UPDATE;
    RETURN QUERY
    WITH batch AS (
        SELECT b.*,
            -- a ref's first message in the batch; the others are its resends
            CASE WHEN b.ref IS NULL THEN b.ord
                 ELSE min(b.ord) OVER (PARTITION BY b.room, b.app, b.name, b.ref) END AS first
        FROM unnest(p_rooms, p_names, p_texts, p_words, p_ts, p_refs, p_users, p_guests, p_apps)
            WITH ORDINALITY AS b(room, name, text, words, ts, ref, "user", guest, app, ord)
    ), found AS (
        -- Each lookup by primary key, whatever the statistics were when the plan was made
        -- (LATERAL ... LIMIT 1 keeps the planner from joining a whole room's rows first).
        SELECT b.ord, m.id, m.text, m.ts, m."user", m.guest
        FROM batch b
        CROSS JOIN LATERAL (
            SELECT f.id FROM refs f
            WHERE f.room = b.room AND f.application = b.app AND f.name = b.name
                AND f.ref = b.ref AND f.at >= p_ref_since
            LIMIT 1) f
        CROSS JOIN LATERAL (
            SELECT m.* FROM messages m WHERE m.room = b.room AND m.id = f.id LIMIT 1) m
        WHERE b.ord = b.first AND b.ref IS NOT NULL
    ), new AS (
        SELECT b.*, r.last_id + row_number() OVER (PARTITION BY b.room ORDER BY b.ord) AS id
        FROM batch b
        CROSS JOIN LATERAL (SELECT r.last_id FROM rooms r WHERE r.room = b.room LIMIT 1) r
        WHERE b.ord = b.first AND NOT EXISTS (SELECT 1 FROM found WHERE found.ord = b.ord)
    ), stored AS (
        INSERT INTO messages (room, id, name, text, ts, ref, "user", guest, application, tsv)
        SELECT n.room, n.id, n.name, n.text, n.ts, n.ref, n."user", n.guest, n.app,
            array_to_tsvector(string_to_array(n.words, ' '))
        FROM new n
    ), remembered AS (
        INSERT INTO refs (room, application, name, ref, id, at)
        SELECT n.room, n.app, n.name, n.ref, n.id, p_now FROM new n WHERE n.ref IS NOT NULL
        ON CONFLICT (room, application, name, ref)
        DO UPDATE SET id = excluded.id, at = excluded.at
    ), counted AS (
        SELECT n.room, min(n.id) - 1 AS before, max(n.id) AS last FROM new n GROUP BY n.room
    ), numbered AS (
        UPDATE rooms r SET last_id = c.last FROM counted c WHERE r.room = c.room
    ), trimmed AS (
        -- each time a room's count crosses a multiple of 64, not at every batch: a trim leaves
        -- dead index entries that the next one would walk again until vacuumed
        DELETE FROM messages m USING counted c
        WHERE p_keep > 0 AND m.room = c.room AND c.last / 64 <> c.before / 64
            AND m.id <= c.last - p_keep
    )
    SELECT b.ord, coalesce(n.id, f.id), n.ord IS NOT NULL AND n.ord = b.ord,
        coalesce(n.text, f.text), coalesce(n.ts, f.ts),
        CASE WHEN n.ord IS NOT NULL THEN n."user" ELSE f."user" END,
        coalesce(n.guest, f.guest)
    FROM batch b
    LEFT JOIN new n ON n.ord = b.first
    LEFT JOIN found f ON f.ord = b.first
    ORDER BY b.ord;
END;
$$;

-- A room's messages that `p_query` matches, newest first, below `p_before`; none of it a read of
-- the whole room. First the newest `p_scan` messages in id order, where a common word is found at
-- once; if they held enough matches to expect the rest among the next 8 × `p_scan`, those (a word
-- in a few percent of the messages); then, for what is still missing, the GIN index (a rarer
-- word: few matches to fetch). The planner alone walks the primary key backwards for every query
-- (it takes any prefix query for a common one), reading the whole room to find a rare word; and
-- the index alone fetches and sorts every match: hundreds of milliseconds for a word in 1 % of a
-- million messages.
CREATE FUNCTION wschat_search(
    p_room text, p_query tsquery, p_before bigint, p_limit integer, p_scan integer
) RETURNS TABLE (
    id bigint, name text, text text, ts text, ref text, "user" text, guest boolean
) LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    v_window integer := p_scan;
    v_floor bigint := p_before;
    v_found integer := 0;
    v_got integer;
    v_read integer;
BEGIN
    LOOP
        RETURN QUERY
            SELECT m.id, m.name, m.text, m.ts, m.ref, m."user", m.guest
            FROM (SELECT * FROM messages m WHERE m.room = p_room AND m.id < v_floor
                  ORDER BY m.id DESC LIMIT v_window) m
            WHERE m.tsv @@ p_query
            ORDER BY m.id DESC LIMIT p_limit - v_found;
        GET DIAGNOSTICS v_got = ROW_COUNT;
        v_found := v_found + v_got;
        IF v_found >= p_limit THEN
            RETURN;
        END IF;
        -- The whole window was read: where it ended, and whether the room went on below it.
        SELECT min(w.id), count(*) INTO v_floor, v_read
            FROM (SELECT m.id FROM messages m WHERE m.room = p_room AND m.id < v_floor
                  ORDER BY m.id DESC LIMIT v_window) w;
        IF v_read < v_window THEN
            RETURN;
        END IF;
        -- Another window only when it can be expected to hold what is missing.
        EXIT WHEN v_window > p_scan OR v_found * 9 < p_limit;
        v_window := v_window * 8;
    END LOOP;
    -- Planned for these values each time (EXECUTE), and `id + 0` so that the primary key's
    -- order is no reason to walk it: the index that the query's words select wins.
    RETURN QUERY EXECUTE
        'SELECT m.id, m.name, m.text, m.ts, m.ref, m."user", m.guest FROM messages m '
        'WHERE m.room = $1 AND m.id < $2 AND m.tsv @@ $3 ORDER BY m.id + 0 DESC LIMIT $4'
        USING p_room, v_floor, p_query, p_limit - v_found;
END;
$$;
