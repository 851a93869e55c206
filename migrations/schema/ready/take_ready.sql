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
-- Set-based, in rounds, each round after the last entry the previous one tried (a keyset on
-- the claim order, "after"):
--   1. each live slot's head after "after" (what is still wanted and 16 more; four times as
--      many after a round that passed over entries concurrent claimers hold, or stopped at the
--      end of its merge), oldest slot first, and no further than the end of the merge so far
--      (entries of a newer slot past it cannot be merged this round), is read by
--      a static statement naming that slot (one generic plan per session: left to choose, the
--      plan cache found a custom plan for the known LIMIT cheaper and planned the read at every
--      call, about 0.1 ms; only the live slots are locked, so the rotation is never in the
--      way), walking the slot's index in claim order (the slots
--      have no statistics worth trusting: sorts and bitmap scans are off while it is planned,
--      so a backlog is never sorted whole). Nothing is locked by reading.
--      With one live slot (the steady state: claims keep up), that read try-locks each entry it
--      reaches instead (OFFSET 0 keeps the filter above the ordered scan, LIMIT stops it at
--      what is wanted): what it returns is taken, step 2 is skipped;
--   2. one statement merges the heads in claim order, up to the first slot's end among those
--      read in full (past it, an unread entry of that slot could come first), and try-locks them
--      in that order until enough are taken (LIMIT over the try-lock's filter: an entry is
--      locked only when it is taken; one a concurrent claimer holds is passed over);
--   3. long_task.delete_ready_entries deletes what was taken; only what this call deleted is
--      returned (an entry a concurrent claimer took and committed meanwhile is not).
-- A round short of what is wanted while entries may remain past what it tried (passed over,
-- or taken by another claimer first) is followed by the next, from the last entry it tried.
--   4. when the ring ran out, long_task.ring_read_again says whether a rotation moved entries
--      past this read (waiting for a rotation in progress to commit); if so, the ring is read
--      once more from its first entry.
-- A round that locked all it wanted but found some of it deleted (a faster claimer took those
-- entries and committed between this round's read and its locks) reads no further ahead next
-- time: a longer read only widens that gap; growing it there let a claimer behind a backlog
-- read up to 100,000 entries a slot per round and run for seconds (benches/sql/backlog_claimers.sql).
-- When no coordinator has turned the ring for 5 s (SQL consumers without a node), the claimer
-- turns it.
CREATE OR REPLACE FUNCTION long_task.take_ready(
    p_n integer, p_group_id integer, p_worker_id bigint, p_topics text[], p_commands boolean,
    p_pattern text, p_blocked text[] DEFAULT '{}')
RETURNS TABLE (task_id bigint, lsc timestamptz, concurrency_key text)
LANGUAGE plpgsql AS $$
DECLARE
    slots smallint[];
    k integer;
    want integer;
    -- how many entries each slot's read looks at: more than wanted, since entries that
    -- concurrent claimers hold are passed over; four times more after a round that grew
    lim integer := 0;
    -- the last round passed over entries (held by concurrent claimers) or stopped at the end
    -- of the merge: the next one reads further ahead
    grow boolean := false;
    -- one live slot (the ring's steady state): its read try-locks and takes, no merge
    single boolean;
    got integer := 0;
    -- the keyset: the last entry tried (set before any entry when a read starts)
    a_prio integer;
    a_lsc timestamptz;
    a_id bigint;
    -- one slot's head
    s_tid tid[];
    s_id bigint[];
    s_lsc timestamptz[];
    s_prio integer[];
    s_key text[];
    -- the heads of all live slots, and the end of the merge (b_*: NULL, none)
    c_slot smallint[];
    c_tid tid[];
    c_id bigint[];
    c_lsc timestamptz[];
    c_prio integer[];
    c_key text[];
    b_prio integer;
    b_lsc timestamptz;
    b_id bigint;
    -- the bound of each slot's read: the end of the merge so far (none yet: past every entry)
    u_prio integer;
    u_lsc timestamptz;
    u_id bigint;
    -- taken (locked), then deleted
    t_slot smallint[];
    t_tid tid[];
    t_id bigint[];
    t_lsc timestamptz[];
    t_prio integer[];
    t_key text[];
    deleted_slot smallint[];
    deleted_tid tid[];
    n_taken integer;
    old_sort text := current_setting('enable_sort');
    old_bitmap text := current_setting('enable_bitmapscan');
    old_plan_mode text := current_setting('plan_cache_mode');
    -- a short read was checked against a rotation moving entries past it (ring_read_again)
    checked boolean := false;
    -- the last round found nothing more on the ring
    ran_out boolean := false;
    -- a read of the ring starts from its first entry (the first round, and once more after
    -- ring_read_again)
    from_start boolean := true;
BEGIN
    IF (SELECT r.last_value FROM long_task.ready_rotated_at r)
       < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 5000 THEN
        PERFORM long_task.rotate_ready();
    END IF;
    LOOP
        IF ran_out THEN
            -- 4. the ring ran out: unless a rotation moved entries past this read, read once
            -- more from the first entry
            EXIT WHEN checked OR NOT long_task.ring_read_again(slots);
            checked := true;
            ran_out := false;
            from_start := true;
        END IF;
        IF from_start THEN
            from_start := false;
            slots := long_task.ready_live_slots();
            single := cardinality(slots) = 1;
            grow := false;
            a_prio := -2147483648; a_lsc := '-infinity'; a_id := -9223372036854775808;
        END IF;
        want := p_n - got;
        lim := CASE WHEN single THEN want
                    WHEN grow THEN least(greatest(want + 16, lim * 4), 100000)
                    ELSE want + 16 END;
        c_slot := '{}'; c_tid := '{}'; c_id := '{}'; c_lsc := '{}'; c_prio := '{}'; c_key := '{}';
        b_prio := NULL; b_lsc := NULL; b_id := NULL;
        -- 1. each live slot's head: one static statement per slot and kind of claimer
        PERFORM set_config('enable_sort', 'off', true);
        PERFORM set_config('enable_bitmapscan', 'off', true);
        PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
        FOR k IN 1 .. cardinality(slots) LOOP
            u_prio := coalesce(b_prio, 2147483647);
            u_lsc := coalesce(b_lsc, 'infinity');
            u_id := coalesce(b_id, 9223372036854775807);
            IF p_worker_id IS NOT NULL THEN
                CASE slots[k]
                WHEN 0 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_0 r
                             WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 1 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_1 r
                             WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 2 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_2 r
                             WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 3 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_3 r
                             WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 4 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_4 r
                             WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 5 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_5 r
                             WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 6 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_6 r
                             WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 7 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_7 r
                             WHERE r.group_id = p_group_id AND (r.worker_id IS NULL OR r.worker_id = p_worker_id)
                       AND ((r.has_command OR r.topic IS NULL) AND p_commands OR r.topic = ANY (p_topics))
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                END CASE;
            ELSE
                CASE slots[k]
                WHEN 0 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_0 r
                             WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 1 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_1 r
                             WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 2 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_2 r
                             WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 3 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_3 r
                             WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 4 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_4 r
                             WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 5 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_5 r
                             WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 6 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_6 r
                             WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                WHEN 7 THEN
                    SELECT array_agg(r.ctid), array_agg(r.task_id), array_agg(r.lsc), array_agg(r.priority),
                           array_agg(r.concurrency_key)
                      INTO s_tid, s_id, s_lsc, s_prio, s_key
                      FROM (SELECT r.* FROM (SELECT r.ctid, r.task_id, r.lsc, r.priority, r.concurrency_key FROM long_task.ready_7 r
                             WHERE NOT r.has_command AND r.topic IS NOT NULL AND r.worker_id IS NULL
                       AND (p_group_id IS NULL OR r.group_id = p_group_id)
                       AND (p_pattern IS NULL OR r.topic LIKE p_pattern)
                               AND (r.concurrency_key IS NULL OR NOT r.concurrency_key = ANY (p_blocked))
                               AND (r.priority, r.lsc, r.task_id) > (a_prio, a_lsc, a_id)
                               AND (r.priority, r.lsc, r.task_id) <= (u_prio, u_lsc, u_id)
                             ORDER BY r.priority, r.lsc, r.task_id OFFSET 0) r
                             WHERE CASE WHEN single THEN pg_try_advisory_xact_lock(long_task.ns_claim(), (r.task_id % 2147483647)::integer)
                                        ELSE true END
                             LIMIT lim) r;
                END CASE;
            END IF;
            CONTINUE WHEN s_id IS NULL;
            c_slot := c_slot || array_fill(slots[k], ARRAY[cardinality(s_id)]);
            c_tid := c_tid || s_tid; c_id := c_id || s_id; c_lsc := c_lsc || s_lsc;
            c_prio := c_prio || s_prio; c_key := c_key || s_key;
            -- read in full: entries of this slot may follow its last one read
            IF NOT single AND cardinality(s_id) = lim
               AND (b_id IS NULL OR (s_prio[lim], s_lsc[lim], s_id[lim]) < (b_prio, b_lsc, b_id)) THEN
                b_prio := s_prio[lim]; b_lsc := s_lsc[lim]; b_id := s_id[lim];
            END IF;
        END LOOP;
        PERFORM set_config('enable_sort', old_sort, true);
        PERFORM set_config('enable_bitmapscan', old_bitmap, true);
        PERFORM set_config('plan_cache_mode', old_plan_mode, true);
        IF cardinality(c_id) = 0 THEN
            ran_out := true;
            CONTINUE;
        END IF;
        -- 2. merged in claim order up to the end, each try-locked only when the walk reaches it
        -- (OFFSET 0 keeps the filter above the sort, LIMIT stops the walk); one live slot's
        -- read took its entries already
        IF single THEN
            t_slot := c_slot; t_tid := c_tid; t_id := c_id; t_lsc := c_lsc; t_prio := c_prio; t_key := c_key;
        ELSE
        SELECT array_agg(x.s), array_agg(x.t), array_agg(x.i), array_agg(x.l), array_agg(x.p), array_agg(x.k)
          INTO t_slot, t_tid, t_id, t_lsc, t_prio, t_key
          FROM (SELECT u.s, u.t, u.i, u.l, u.p, u.k
                  FROM (SELECT c.s, c.t, c.i, c.l, c.p, c.k
                          FROM unnest(c_slot, c_tid, c_id, c_lsc, c_prio, c_key) AS c(s, t, i, l, p, k)
                         WHERE b_id IS NULL OR (c.p, c.l, c.i) <= (b_prio, b_lsc, b_id)
                         ORDER BY c.p, c.l, c.i
                        OFFSET 0) u
                 WHERE pg_try_advisory_xact_lock(long_task.ns_claim(), (u.i % 2147483647)::integer)
                 LIMIT want) x;
        END IF;
        n_taken := coalesce(cardinality(t_id), 0);
        IF n_taken > 0 THEN
            -- 3. deleted: only what this call deleted is taken
            SELECT d.deleted_slots, d.deleted_tids INTO deleted_slot, deleted_tid
              FROM long_task.delete_ready_entries(t_slot, t_tid) d;
            IF cardinality(deleted_tid) = n_taken THEN
                RETURN QUERY SELECT u.i, u.l, u.k FROM unnest(t_id, t_lsc, t_key) AS u(i, l, k);
            ELSE
                RETURN QUERY
                    SELECT u.i, u.l, u.k
                      FROM unnest(t_slot, t_tid, t_id, t_lsc, t_key) WITH ORDINALITY AS u(s, t, i, l, k, o)
                     WHERE (u.s, u.t) IN (SELECT d.s, d.t FROM unnest(deleted_slot, deleted_tid) AS d(s, t))
                     ORDER BY u.o;
            END IF;
            got := got + cardinality(deleted_tid);
        END IF;
        EXIT WHEN got >= p_n;
        -- the next round starts after the last entry tried: the last taken when the walk stopped
        -- there, else the end of the merge (none: the ring ran out)
        grow := n_taken < want;
        IF n_taken = want THEN
            a_prio := t_prio[n_taken]; a_lsc := t_lsc[n_taken]; a_id := t_id[n_taken];
        ELSIF b_id IS NOT NULL THEN
            a_prio := b_prio; a_lsc := b_lsc; a_id := b_id;
        ELSE
            ran_out := true;
        END IF;
    END LOOP;
END
$$;
