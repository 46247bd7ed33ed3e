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
-- written room's messages older than its newest `keep` (a room may briefly keep up to 64 more).
CREATE FUNCTION wschat_append(
    p_rooms text[], p_names text[], p_texts text[], p_words text[], p_ts text[],
    p_refs text[], p_users text[], p_guests boolean[], p_apps boolean[],
    p_now double precision, p_ref_since double precision, p_keep bigint
) RETURNS TABLE (
    ord integer, id bigint, fresh boolean, text text, ts text, "user" text, guest boolean
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_rooms text[];
    v_first bigint[];
    v_last bigint[];
    v_at integer;
    v_id bigint;
    v_found record;
BEGIN
    INSERT INTO rooms AS r (room)
        SELECT DISTINCT b.room FROM unnest(p_rooms) AS b(room)
        ON CONFLICT DO NOTHING;
    -- Locked in one order by every node: two batches sharing rooms cannot deadlock; a later
    -- statement of this function sees whatever the previous holder committed.
    SELECT array_agg(r.room ORDER BY r.room), array_agg(r.last_id ORDER BY r.room)
        INTO v_rooms, v_last
        FROM (SELECT r.room, r.last_id FROM rooms r WHERE r.room = ANY (p_rooms)
              ORDER BY r.room FOR UPDATE) AS r;
    v_first := v_last;
    FOR i IN 1 .. coalesce(array_length(p_rooms, 1), 0) LOOP
        IF p_refs[i] IS NOT NULL THEN
            SELECT m.id, m.text, m.ts, m."user", m.guest INTO v_found
                FROM refs f JOIN messages m ON m.room = f.room AND m.id = f.id
                WHERE f.room = p_rooms[i] AND f.application = p_apps[i]
                  AND f.name = p_names[i] AND f.ref = p_refs[i] AND f.at >= p_ref_since;
            IF FOUND THEN
                RETURN QUERY SELECT i, v_found.id, false, v_found.text, v_found.ts,
                    v_found."user", v_found.guest;
                CONTINUE;
            END IF;
        END IF;
        v_at := array_position(v_rooms, p_rooms[i]);
        v_id := v_last[v_at] + 1;
        v_last[v_at] := v_id;
        INSERT INTO messages (room, id, name, text, ts, ref, "user", guest, application, tsv)
            VALUES (p_rooms[i], v_id, p_names[i], p_texts[i], p_ts[i], p_refs[i], p_users[i],
                    p_guests[i], p_apps[i], array_to_tsvector(string_to_array(p_words[i], ' ')));
        IF p_refs[i] IS NOT NULL THEN
            INSERT INTO refs AS f (room, application, name, ref, id, at)
                VALUES (p_rooms[i], p_apps[i], p_names[i], p_refs[i], v_id, p_now)
                ON CONFLICT (room, application, name, ref)
                DO UPDATE SET id = excluded.id, at = excluded.at;
        END IF;
        RETURN QUERY SELECT i, v_id, true, p_texts[i], p_ts[i], p_users[i], p_guests[i];
    END LOOP;
    UPDATE rooms r SET last_id = v.last_id
        FROM unnest(v_rooms, v_last) AS v(room, last_id)
        WHERE r.room = v.room AND r.last_id <> v.last_id;
    -- Trimmed each time a room's count crosses a multiple of 64, not at every batch: each
    -- trim leaves dead index entries that the next one would walk again until vacuumed.
    IF p_keep > 0 THEN
        DELETE FROM messages m USING unnest(v_rooms, v_first, v_last) AS v(room, first, last_id)
            WHERE m.room = v.room AND v.last_id / 64 <> v.first / 64
              AND m.id <= v.last_id - p_keep;
    END IF;
END;
$$;
