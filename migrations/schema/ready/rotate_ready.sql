-- Turns the ready ring (one rotation at a time, at most one every 200 ms; a busy one is skipped,
-- never waited for), for the coordinator's Scheduler (long_task.turn_ready) or a claim that finds
-- the ring unturned for 5 s:
--   1. retires the head slot while it holds few live entries (none, usually: claims took them;
--      at most 1,000, or a tenth of what the slot holds): they move to the insert slot, the slot
--      is emptied by TRUNCATE and the head advances. A head with more waits (a backlog: claims
--      drain it, oldest first);
--   2. empties the same way any slot outside the live range that still has storage (an entry
--      inserted while its slot was retired, or a rotation that was rolled back);
--   3. seals the insert slot (a new insert generation) once it holds entries and the next slot
--      is empty.
-- Moving entries wakes their groups (on commit): a claim that ran meanwhile read the live slots
-- without the moved entries (the head had advanced, the insert was not committed), came back
-- short and took the queue for empty.
-- Every lock it takes waits at most 20 ms, a second head none; a slot it cannot lock is left for
-- the next rotation.
-- Returns the number of slots emptied.
CREATE OR REPLACE FUNCTION long_task.rotate_ready() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
    gen bigint;
    slot integer;
    live integer;
    limit_live bigint;
    emptied integer := 0;
    moved integer[] := '{}';
    gids integer[];
    old_timeout text := current_setting('lock_timeout');
BEGIN
    -- at most every 200 ms (a rotation empties files and costs every session a catalog reload)
    IF NOT pg_try_advisory_xact_lock(long_task.ns_ring(), 0)
       OR (SELECT r.last_value FROM long_task.ready_rotated_at r)
          > (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 200 THEN
        RETURN 0;
    END IF;
    PERFORM setval('long_task.ready_rotated_at', (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    SELECT h.last_value INTO head FROM long_task.ready_head h;
    SELECT g.last_value INTO gen FROM long_task.ready_gen g;
    PERFORM set_config('lock_timeout', '20ms', true);

    -- 1. the head
    WHILE head < gen LOOP
        BEGIN
            -- the next head after one retired is not waited for: the retired slot stays locked
            -- meanwhile, and a take that ran out waits on it (long_task.ring_read_again) while
            -- holding the next head it read
            EXECUTE format('LOCK TABLE long_task.ready_%s IN ACCESS EXCLUSIVE MODE%s', head % 8,
                           CASE WHEN emptied > 0 THEN ' NOWAIT' ELSE '' END);
            -- live entries, up to what a retirement moves at most: 1,000, or a tenth of the slot
            -- (its taken entries, dead, are what every claim walks: a slot mostly taken is worth
            -- compacting); more stay for the claims to drain
            limit_live := greatest(1000, pg_relation_size(format('long_task.ready_%s', head % 8)::regclass) / 8192 * 10);
            EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM long_task.ready_%s LIMIT %s) x', head % 8, limit_live + 1)
               INTO live;
            EXIT WHEN live > limit_live;
            IF live > 0 THEN
                EXECUTE format('WITH m AS (INSERT INTO long_task.ready_%1$s
                                SELECT %1$s, group_id, priority, lsc, task_id, topic, has_command, worker_id, concurrency_key
                                  FROM long_task.ready_%2$s RETURNING group_id)
                                SELECT array_agg(DISTINCT m.group_id) FROM m', gen % 8, head % 8)
                   INTO gids;
                moved := moved || coalesce(gids, '{}');
            END IF;
            EXECUTE format('TRUNCATE long_task.ready_%s', head % 8);
        EXCEPTION WHEN lock_not_available THEN
            EXIT;
        END;
        head := head + 1;
        PERFORM setval('long_task.ready_head', head);
        emptied := emptied + 1;
    END LOOP;

    -- 2. slots outside head .. gen with storage
    FOR slot IN 0..7 LOOP
        CONTINUE WHEN slot = ANY (long_task.ready_live_slots());
        CONTINUE WHEN pg_relation_size(format('long_task.ready_%s', slot)::regclass) = 0;
        BEGIN
            EXECUTE format('LOCK TABLE long_task.ready_%s IN ACCESS EXCLUSIVE MODE', slot);
            EXECUTE format('WITH m AS (INSERT INTO long_task.ready_%1$s
                            SELECT %1$s, group_id, priority, lsc, task_id, topic, has_command, worker_id, concurrency_key
                              FROM long_task.ready_%2$s RETURNING group_id)
                            SELECT array_agg(DISTINCT m.group_id) FROM m', gen % 8, slot)
               INTO gids;
            moved := moved || coalesce(gids, '{}');
            EXECUTE format('TRUNCATE long_task.ready_%s', slot);
            emptied := emptied + 1;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;

    -- 3. seal the insert slot
    IF gen - head < 7
       AND pg_relation_size(format('long_task.ready_%s', gen % 8)::regclass) > 0
       AND pg_relation_size(format('long_task.ready_%s', (gen + 1) % 8)::regclass) = 0 THEN
        PERFORM setval('long_task.ready_gen', gen + 1);
    END IF;
    PERFORM pg_notify(long_task.channel(g), 'wake') FROM (SELECT DISTINCT x FROM unnest(moved) x) d(g);
    PERFORM set_config('lock_timeout', old_timeout, true);
    RETURN emptied;
END
$$;
