-- Takes up to p_n entries off the ready ring of a fair-share group (group_settings.fair_share)
-- like long_task.take_ready, but round-robin across concurrency keys: the best priority waiting
-- is found first; then, in turns, the least recently served keys of long_task.fair_key (not in
-- p_blocked: keys at their limit) each give their head entry of that priority, and each key
-- served moves to the back; then the next priority the same way. Entries without a fair_key row
-- (no key, or a key whose row was dropped meanwhile) come after, first in first out
-- (take_ready), and their keys get a row. Runs under the group's limit lock (long_task.take_limited): the claims
-- of the group take turns, so the turns are the group's. Cost: a few index probes per entry
-- taken, whatever the number of keys waiting (measured in docs/queue.md).
CREATE OR REPLACE FUNCTION long_task.take_fair(
    p_n integer, p_group_id integer, p_worker_id bigint, p_topics text[], p_commands boolean,
    p_pattern text, p_blocked text[])
RETURNS TABLE (task_id bigint, lsc timestamptz, concurrency_key text)
LANGUAGE plpgsql AS $$
DECLARE
    -- the live slots, read once like take_ready does (not on every probe)
    slots smallint[] := long_task.ready_live_slots();
    best integer;
    k record;
    e record;
    got integer := 0;
    progress boolean;
    -- keys passed over: at their limit or with nothing this claimer may take (for the whole
    -- call), or with a head of a worse priority than this turn's (until the next priority)
    done text[] := coalesce(p_blocked, '{}');
    later text[] := '{}';
    deleted integer;
BEGIN
    SELECT r.priority INTO best FROM long_task.ready r
     WHERE r.group_id = p_group_id AND r.slot = ANY (slots)
     ORDER BY r.priority LIMIT 1;
    IF best IS NULL THEN
        RETURN;
    END IF;
    LOOP
        progress := false;
        FOR k IN SELECT f.key FROM long_task.fair_key f
                  WHERE f.group_id = p_group_id AND NOT f.key = ANY (done) AND NOT f.key = ANY (later)
                  ORDER BY f.served, f.key
                  LIMIT p_n - got
        LOOP
            SELECT r.tableoid::regclass AS rel, r.ctid AS tid, r.task_id AS id, r.lsc AS at, r.priority AS prio
              INTO e
              FROM long_task.ready r
             WHERE r.group_id = p_group_id AND r.concurrency_key = k.key
               AND r.slot = ANY (slots)
               AND CASE WHEN p_worker_id IS NOT NULL
                        THEN (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                             AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                        ELSE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                             AND (p_pattern IS NULL OR r.topic LIKE p_pattern) END
             ORDER BY r.priority, r.lsc, r.task_id
             LIMIT 1;
            IF e.id IS NULL THEN
                -- nothing this claimer may take; a key with no entry at all loses its row
                IF NOT EXISTS (SELECT 1 FROM long_task.ready r
                                WHERE r.group_id = p_group_id AND r.concurrency_key = k.key) THEN
                    DELETE FROM long_task.fair_key f WHERE f.group_id = p_group_id AND f.key = k.key;
                END IF;
                done := done || k.key;
                CONTINUE;
            END IF;
            IF e.prio > best THEN
                later := later || k.key; -- its turn comes with its priority
                CONTINUE;
            END IF;
            UPDATE long_task.fair_key f SET served = nextval('long_task.fair_served')
             WHERE f.group_id = p_group_id AND f.key = k.key;
            IF pg_try_advisory_xact_lock(long_task.ns_claim(), (e.id % 2147483647)::integer) THEN
                EXECUTE format('DELETE FROM %s r WHERE r.ctid = $1', e.rel) USING e.tid;
                GET DIAGNOSTICS deleted = ROW_COUNT;
                IF deleted = 1 THEN
                    task_id := e.id;
                    lsc := e.at;
                    concurrency_key := k.key;
                    RETURN NEXT;
                    got := got + 1;
                    progress := true;
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN got >= p_n;
        IF NOT progress THEN
            -- this priority is done: the next one, every key again
            SELECT r.priority INTO best FROM long_task.ready r
             WHERE r.group_id = p_group_id AND r.slot = ANY (slots)
               AND r.priority > best
             ORDER BY r.priority LIMIT 1;
            EXIT WHEN best IS NULL;
            later := '{}';
        END IF;
    END LOOP;
    IF got < p_n THEN
        FOR e IN SELECT * FROM long_task.take_ready(p_n - got, p_group_id, p_worker_id, p_topics, p_commands,
                                                    p_pattern, coalesce(p_blocked, '{}')) LOOP
            IF e.concurrency_key IS NOT NULL THEN
                INSERT INTO long_task.fair_key AS f (group_id, key, served)
                VALUES (p_group_id, e.concurrency_key, nextval('long_task.fair_served'))
                ON CONFLICT (group_id, key) DO UPDATE SET served = excluded.served;
            END IF;
            task_id := e.task_id;
            lsc := e.lsc;
            concurrency_key := e.concurrency_key;
            RETURN NEXT;
        END LOOP;
    END IF;
END
$$;
