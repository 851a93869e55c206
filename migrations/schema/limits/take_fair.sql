-- Takes up to p_n entries off the ready ring of a fair-share group (group_settings.fair_share)
-- like long_task.take_ready, but round-robin across concurrency keys: the best priority waiting
-- is found first; then, in turns, the least recently served keys of long_task.fair_key (not in
-- p_blocked: keys at their limit) each give their head entry of that priority, and each key
-- served moves to the back; then the next priority the same way. Entries without a fair_key row
-- (no key, or a key whose row was dropped meanwhile) come after, first in first out
-- (take_ready), and their keys get a row. Runs under the group's limit lock (long_task.take_limited): the claims
-- of the group take turns, so the turns are the group's.
-- Cost: one statement per turn finds the head entries of all the turn's keys at once (an index
-- probe per key), one moves the keys served to the back, one DELETE per slot takes the entries;
-- whatever the number of keys waiting (measured in docs/queue.md).
CREATE OR REPLACE FUNCTION long_task.take_fair(
    p_n integer, p_group_id integer, p_worker_id bigint, p_topics text[], p_commands boolean,
    p_pattern text, p_blocked text[])
RETURNS TABLE (task_id bigint, lsc timestamptz, concurrency_key text)
LANGUAGE plpgsql AS $$
DECLARE
    -- the live slots, read once like take_ready does (not on every probe)
    slots smallint[] := long_task.ready_live_slots();
    best integer;
    e record;
    got integer := 0;
    progress boolean;
    -- keys passed over: at their limit or with nothing this claimer may take (for the whole
    -- call), or with a head of a worse priority than this turn's (until the next priority)
    done text[] := coalesce(p_blocked, '{}');
    later text[] := '{}';
    -- this turn: the keys served, in turn order, and the entries locked to be taken
    served text[];
    gone text[];
    t_slot smallint[];
    t_tid tid[];
    t_id bigint[];
    t_lsc timestamptz[];
    t_key text[];
    d_slot smallint[];
    d_tid tid[];
    turn text[];
    h_slot smallint[];
    h_tid tid[];
    h_id bigint[];
    h_lsc timestamptz[];
    h_prio integer[];
    s_tid tid[];
    s_id bigint[];
    s_lsc timestamptz[];
    s_prio integer[];
    k integer;
    old_plan_mode text := current_setting('plan_cache_mode');
BEGIN
    SELECT r.priority INTO best FROM long_task.ready r
     WHERE r.group_id = p_group_id AND r.slot = ANY (slots)
     ORDER BY r.priority LIMIT 1;
    IF best IS NULL THEN
        RETURN;
    END IF;
    LOOP
        progress := false;
        served := '{}'; gone := '{}';
        t_slot := '{}'; t_tid := '{}'; t_id := '{}'; t_lsc := '{}'; t_key := '{}';
        -- the turn's keys, least recently served first
        turn := ARRAY(SELECT f.key FROM long_task.fair_key f
                       WHERE f.group_id = p_group_id AND NOT f.key = ANY (done) AND NOT f.key = ANY (later)
                       ORDER BY f.served, f.key
                       LIMIT p_n - got);
        -- the head entry of each of the turn's keys that this claimer may take (NULL: none), the
        -- best over the live slots: one static statement per slot (only the live slots are
        -- locked), planned once per session (a generic plan: the turn's size does not change it)
        h_slot := array_fill(NULL::smallint, ARRAY[cardinality(turn)]);
        h_tid := array_fill(NULL::tid, ARRAY[cardinality(turn)]);
        h_id := array_fill(NULL::bigint, ARRAY[cardinality(turn)]);
        h_lsc := array_fill(NULL::timestamptz, ARRAY[cardinality(turn)]);
        h_prio := array_fill(NULL::integer, ARRAY[cardinality(turn)]);
        IF cardinality(turn) > 0 THEN
            PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
            FOR k IN 1 .. cardinality(slots) LOOP
                CASE slots[k]
                WHEN 0 THEN
                    SELECT array_agg(h.tid ORDER BY u.o), array_agg(h.id ORDER BY u.o),
                           array_agg(h.at ORDER BY u.o), array_agg(h.prio ORDER BY u.o)
                      INTO s_tid, s_id, s_lsc, s_prio
                      FROM unnest(turn) WITH ORDINALITY AS u(key, o)
                      LEFT JOIN LATERAL (
                           SELECT r.ctid AS tid, r.task_id AS id, r.lsc AS at, r.priority AS prio
                             FROM long_task.ready_0 r
                            WHERE r.group_id = p_group_id AND r.concurrency_key = u.key AND CASE WHEN p_worker_id IS NOT NULL
                                      THEN (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                                           AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                                      ELSE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                                           AND (p_pattern IS NULL OR r.topic LIKE p_pattern) END
                            ORDER BY r.priority, r.lsc, r.task_id LIMIT 1) h ON true;
                WHEN 1 THEN
                    SELECT array_agg(h.tid ORDER BY u.o), array_agg(h.id ORDER BY u.o),
                           array_agg(h.at ORDER BY u.o), array_agg(h.prio ORDER BY u.o)
                      INTO s_tid, s_id, s_lsc, s_prio
                      FROM unnest(turn) WITH ORDINALITY AS u(key, o)
                      LEFT JOIN LATERAL (
                           SELECT r.ctid AS tid, r.task_id AS id, r.lsc AS at, r.priority AS prio
                             FROM long_task.ready_1 r
                            WHERE r.group_id = p_group_id AND r.concurrency_key = u.key AND CASE WHEN p_worker_id IS NOT NULL
                                      THEN (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                                           AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                                      ELSE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                                           AND (p_pattern IS NULL OR r.topic LIKE p_pattern) END
                            ORDER BY r.priority, r.lsc, r.task_id LIMIT 1) h ON true;
                WHEN 2 THEN
                    SELECT array_agg(h.tid ORDER BY u.o), array_agg(h.id ORDER BY u.o),
                           array_agg(h.at ORDER BY u.o), array_agg(h.prio ORDER BY u.o)
                      INTO s_tid, s_id, s_lsc, s_prio
                      FROM unnest(turn) WITH ORDINALITY AS u(key, o)
                      LEFT JOIN LATERAL (
                           SELECT r.ctid AS tid, r.task_id AS id, r.lsc AS at, r.priority AS prio
                             FROM long_task.ready_2 r
                            WHERE r.group_id = p_group_id AND r.concurrency_key = u.key AND CASE WHEN p_worker_id IS NOT NULL
                                      THEN (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                                           AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                                      ELSE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                                           AND (p_pattern IS NULL OR r.topic LIKE p_pattern) END
                            ORDER BY r.priority, r.lsc, r.task_id LIMIT 1) h ON true;
                WHEN 3 THEN
                    SELECT array_agg(h.tid ORDER BY u.o), array_agg(h.id ORDER BY u.o),
                           array_agg(h.at ORDER BY u.o), array_agg(h.prio ORDER BY u.o)
                      INTO s_tid, s_id, s_lsc, s_prio
                      FROM unnest(turn) WITH ORDINALITY AS u(key, o)
                      LEFT JOIN LATERAL (
                           SELECT r.ctid AS tid, r.task_id AS id, r.lsc AS at, r.priority AS prio
                             FROM long_task.ready_3 r
                            WHERE r.group_id = p_group_id AND r.concurrency_key = u.key AND CASE WHEN p_worker_id IS NOT NULL
                                      THEN (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                                           AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                                      ELSE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                                           AND (p_pattern IS NULL OR r.topic LIKE p_pattern) END
                            ORDER BY r.priority, r.lsc, r.task_id LIMIT 1) h ON true;
                WHEN 4 THEN
                    SELECT array_agg(h.tid ORDER BY u.o), array_agg(h.id ORDER BY u.o),
                           array_agg(h.at ORDER BY u.o), array_agg(h.prio ORDER BY u.o)
                      INTO s_tid, s_id, s_lsc, s_prio
                      FROM unnest(turn) WITH ORDINALITY AS u(key, o)
                      LEFT JOIN LATERAL (
                           SELECT r.ctid AS tid, r.task_id AS id, r.lsc AS at, r.priority AS prio
                             FROM long_task.ready_4 r
                            WHERE r.group_id = p_group_id AND r.concurrency_key = u.key AND CASE WHEN p_worker_id IS NOT NULL
                                      THEN (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                                           AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                                      ELSE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                                           AND (p_pattern IS NULL OR r.topic LIKE p_pattern) END
                            ORDER BY r.priority, r.lsc, r.task_id LIMIT 1) h ON true;
                WHEN 5 THEN
                    SELECT array_agg(h.tid ORDER BY u.o), array_agg(h.id ORDER BY u.o),
                           array_agg(h.at ORDER BY u.o), array_agg(h.prio ORDER BY u.o)
                      INTO s_tid, s_id, s_lsc, s_prio
                      FROM unnest(turn) WITH ORDINALITY AS u(key, o)
                      LEFT JOIN LATERAL (
                           SELECT r.ctid AS tid, r.task_id AS id, r.lsc AS at, r.priority AS prio
                             FROM long_task.ready_5 r
                            WHERE r.group_id = p_group_id AND r.concurrency_key = u.key AND CASE WHEN p_worker_id IS NOT NULL
                                      THEN (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                                           AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                                      ELSE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                                           AND (p_pattern IS NULL OR r.topic LIKE p_pattern) END
                            ORDER BY r.priority, r.lsc, r.task_id LIMIT 1) h ON true;
                WHEN 6 THEN
                    SELECT array_agg(h.tid ORDER BY u.o), array_agg(h.id ORDER BY u.o),
                           array_agg(h.at ORDER BY u.o), array_agg(h.prio ORDER BY u.o)
                      INTO s_tid, s_id, s_lsc, s_prio
                      FROM unnest(turn) WITH ORDINALITY AS u(key, o)
                      LEFT JOIN LATERAL (
                           SELECT r.ctid AS tid, r.task_id AS id, r.lsc AS at, r.priority AS prio
                             FROM long_task.ready_6 r
                            WHERE r.group_id = p_group_id AND r.concurrency_key = u.key AND CASE WHEN p_worker_id IS NOT NULL
                                      THEN (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                                           AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                                      ELSE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                                           AND (p_pattern IS NULL OR r.topic LIKE p_pattern) END
                            ORDER BY r.priority, r.lsc, r.task_id LIMIT 1) h ON true;
                WHEN 7 THEN
                    SELECT array_agg(h.tid ORDER BY u.o), array_agg(h.id ORDER BY u.o),
                           array_agg(h.at ORDER BY u.o), array_agg(h.prio ORDER BY u.o)
                      INTO s_tid, s_id, s_lsc, s_prio
                      FROM unnest(turn) WITH ORDINALITY AS u(key, o)
                      LEFT JOIN LATERAL (
                           SELECT r.ctid AS tid, r.task_id AS id, r.lsc AS at, r.priority AS prio
                             FROM long_task.ready_7 r
                            WHERE r.group_id = p_group_id AND r.concurrency_key = u.key AND CASE WHEN p_worker_id IS NOT NULL
                                      THEN (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                                           AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                                      ELSE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                                           AND (p_pattern IS NULL OR r.topic LIKE p_pattern) END
                            ORDER BY r.priority, r.lsc, r.task_id LIMIT 1) h ON true;
                END CASE;
                FOR i IN 1 .. cardinality(turn) LOOP
                    IF s_id[i] IS NOT NULL AND (h_id[i] IS NULL OR
                                                (s_prio[i], s_lsc[i], s_id[i]) < (h_prio[i], h_lsc[i], h_id[i])) THEN
                        h_slot[i] := slots[k]; h_tid[i] := s_tid[i]; h_id[i] := s_id[i];
                        h_lsc[i] := s_lsc[i]; h_prio[i] := s_prio[i];
                    END IF;
                END LOOP;
            END LOOP;
            PERFORM set_config('plan_cache_mode', old_plan_mode, true);
        END IF;
        FOR i IN 1 .. cardinality(turn) LOOP
            IF h_id[i] IS NULL THEN
                -- nothing this claimer may take; a key with no entry at all loses its row (below)
                gone := gone || turn[i];
                done := done || turn[i];
            ELSIF h_prio[i] > best THEN
                later := later || turn[i]; -- its turn comes with its priority
            ELSE
                served := served || turn[i];
                IF pg_try_advisory_xact_lock(long_task.ns_claim(), (h_id[i] % 2147483647)::integer) THEN
                    t_slot := t_slot || h_slot[i];
                    t_tid := t_tid || h_tid[i];
                    t_id := t_id || h_id[i];
                    t_lsc := t_lsc || h_lsc[i];
                    t_key := t_key || turn[i];
                END IF;
            END IF;
        END LOOP;
        IF cardinality(gone) > 0 THEN
            DELETE FROM long_task.fair_key f
             WHERE f.group_id = p_group_id AND f.key = ANY (gone)
               AND NOT EXISTS (SELECT 1 FROM long_task.ready r
                                WHERE r.group_id = p_group_id AND r.concurrency_key = f.key);
        END IF;
        IF cardinality(served) > 0 THEN
            -- the keys served move to the back, in the order they were served
            PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
            UPDATE long_task.fair_key f SET served = n.served
              FROM (SELECT u.key, nextval('long_task.fair_served') AS served
                      FROM unnest(served) WITH ORDINALITY AS u(key, o) ORDER BY u.o) n
             WHERE f.group_id = p_group_id AND f.key = n.key;
            PERFORM set_config('plan_cache_mode', old_plan_mode, true);
        END IF;
        -- the turn's entries, one DELETE per slot; only those deleted here are taken
        SELECT d.deleted_slots, d.deleted_tids INTO d_slot, d_tid
          FROM long_task.delete_ready_entries(t_slot, t_tid) d;
        IF cardinality(d_tid) > 0 THEN
            RETURN QUERY
                SELECT u.i, u.l, u.k
                  FROM unnest(t_slot, t_tid, t_id, t_lsc, t_key) WITH ORDINALITY AS u(s, t, i, l, k, o)
                 WHERE (u.s, u.t) IN (SELECT d.s, d.t FROM unnest(d_slot, d_tid) AS d(s, t))
                 ORDER BY u.o;
            got := got + cardinality(d_tid);
            progress := true;
        END IF;
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
