-- Takes up to p_n entries off the ready ring, in claim order (priority, then first in first
-- out), and deletes them. An entry is taken under a transaction advisory lock on its task
-- (ns_claim, task id): two claimers never take the same entry, and an entry is locked only when
-- it is taken (a row lock on a look-ahead entry would hide it from other claimers, who would
-- then believe the queue empty).
-- A node of p_group_id (p_worker_id set) takes entries not pinned elsewhere: process tasks when
-- p_commands (a command, or neither command nor topic) and tasks whose topic is in p_topics; a
-- SQL consumer (p_worker_id NULL) takes unpinned entries with a topic and no command, matching
-- p_pattern (SQL LIKE; NULL: any), of group p_group_id (NULL: any). Returns each entry's task id
-- and lsc: the caller claims the task only if it still waits with that last_state_change (an
-- entry is a hint; the task row decides) and concurrency key. Entries whose key is in p_blocked
-- (keys at their concurrency limit, long_task.take_limited) are passed over and stay.
-- Each live slot is read through its own cursor, a static statement naming that slot (planned
-- once per session; only the live slots are locked, so the rotation is never in the way), which
-- walks the slot's index in claim order (the slots have no statistics worth trusting: sorts and
-- bitmap scans are off while it is planned, so a backlog is never sorted whole); the cursors
-- are merged one entry at a time. Only entries this call deleted are
-- returned (one a concurrent claimer took meanwhile is not). When no coordinator has turned the
-- ring for 5 s (SQL consumers without a node), the claimer turns it.
CREATE OR REPLACE FUNCTION long_task.take_ready(
    p_n integer, p_group_id integer, p_worker_id bigint, p_topics text[], p_commands boolean,
    p_pattern text, p_blocked text[] DEFAULT '{}')
RETURNS TABLE (task_id bigint, lsc timestamptz, concurrency_key text)
LANGUAGE plpgsql AS $$
DECLARE
    slots smallint[];
    cur refcursor;
    portals text[] := '{}';
    -- the head of each cursor
    h_tid tid[] := '{}';
    h_id bigint[] := '{}';
    h_lsc timestamptz[] := '{}';
    h_prio integer[] := '{}';
    h_key text[] := '{}';
    r_tid tid;
    r_id bigint;
    r_lsc timestamptz;
    r_prio integer;
    r_key text;
    best integer;
    k integer;
    taken_slot smallint[] := '{}';
    taken_tid tid[] := '{}';
    taken_id bigint[] := '{}';
    taken_lsc timestamptz[] := '{}';
    taken_key text[] := '{}';
    deleted_slot smallint[] := '{}';
    deleted_tid tid[] := '{}';
    got integer := 0;
    exhausted boolean;
    old_sort text := current_setting('enable_sort');
    old_bitmap text := current_setting('enable_bitmapscan');
BEGIN
    IF (SELECT r.last_value FROM long_task.ready_rotated_at r)
       < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 5000 THEN
        PERFORM long_task.rotate_ready();
    END IF;
    slots := long_task.ready_live_slots();
    -- rounds: an entry taken here may have been deleted by a claimer whose commit this round's
    -- snapshot did not see; then the ring is read again (a short result means the ring ran out)
    LOOP
        portals := '{}'; h_tid := '{}'; h_id := '{}'; h_lsc := '{}'; h_prio := '{}'; h_key := '{}';
        taken_slot := '{}'; taken_tid := '{}'; taken_id := '{}'; taken_lsc := '{}'; taken_key := '{}';
        deleted_slot := '{}'; deleted_tid := '{}';
        exhausted := false;
        PERFORM set_config('enable_sort', 'off', true);
        PERFORM set_config('enable_bitmapscan', 'off', true);
        FOR k IN 1 .. cardinality(slots) LOOP
            cur := NULL;
            -- one static statement per slot and kind of claimer: planned once per session, and
            -- naming one slot, so only the live slots are locked
            IF p_worker_id IS NOT NULL THEN
                CASE slots[k]
                WHEN 0 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_0 r
                     WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 1 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_1 r
                     WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 2 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_2 r
                     WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 3 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_3 r
                     WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 4 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_4 r
                     WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 5 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_5 r
                     WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 6 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_6 r
                     WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 7 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_7 r
                     WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                END CASE;
            ELSE
                CASE slots[k]
                WHEN 0 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_0 r
                     WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 1 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_1 r
                     WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 2 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_2 r
                     WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 3 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_3 r
                     WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 4 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_4 r
                     WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 5 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_5 r
                     WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 6 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_6 r
                     WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                WHEN 7 THEN OPEN cur FOR
                    SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_7 r
                     WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                       AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                     ORDER BY r.priority, r.lsc, r.task_id;
                END CASE;
            END IF;
            portals[k] := cur;
            FETCH cur INTO r_tid, r_id, r_lsc, r_prio, r_key;
            h_tid[k] := r_tid; h_id[k] := r_id; h_lsc[k] := r_lsc; h_prio[k] := r_prio; h_key[k] := r_key;
        END LOOP;
        PERFORM set_config('enable_sort', old_sort, true);
        PERFORM set_config('enable_bitmapscan', old_bitmap, true);
        WHILE cardinality(taken_tid) < p_n - got LOOP
            best := NULL;
            FOR k IN 1 .. cardinality(slots) LOOP
                CONTINUE WHEN h_id[k] IS NULL;
                IF best IS NULL OR (h_prio[k], h_lsc[k], h_id[k]) < (h_prio[best], h_lsc[best], h_id[best]) THEN
                    best := k;
                END IF;
            END LOOP;
            IF best IS NULL THEN
                exhausted := true;
                EXIT;
            END IF;
            IF pg_try_advisory_xact_lock(long_task.ns_claim(), (h_id[best] % 2147483647)::integer) THEN
                taken_slot := taken_slot || slots[best];
                taken_tid := taken_tid || h_tid[best];
                taken_id := taken_id || h_id[best];
                taken_lsc := taken_lsc || h_lsc[best];
                taken_key := taken_key || h_key[best];
            END IF;
            cur := portals[best];
            FETCH cur INTO r_tid, r_id, r_lsc, r_prio, r_key;
            h_tid[best] := r_tid; h_id[best] := r_id; h_lsc[best] := r_lsc; h_prio[best] := r_prio;
            h_key[best] := r_key;
        END LOOP;
        FOR k IN 1 .. cardinality(slots) LOOP
            cur := portals[k];
            CLOSE cur;
        END LOOP;
        SELECT d.deleted_slots, d.deleted_tids INTO deleted_slot, deleted_tid
          FROM long_task.delete_ready_entries(taken_slot, taken_tid) d;
        -- the entries this round deleted, in the order they were taken
        RETURN QUERY
            SELECT u.i, u.l, u.k
              FROM unnest(taken_slot, taken_tid, taken_id, taken_lsc, taken_key) WITH ORDINALITY AS u(s, t, i, l, k, o)
             WHERE (u.s, u.t) IN (SELECT d.s, d.t FROM unnest(deleted_slot, deleted_tid) AS d(s, t))
             ORDER BY u.o;
        got := got + cardinality(deleted_tid);
        EXIT WHEN exhausted OR got >= p_n OR cardinality(deleted_tid) = cardinality(taken_tid);
    END LOOP;
END
$$;
