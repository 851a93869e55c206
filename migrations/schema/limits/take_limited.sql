-- Takes entries off the ready ring like long_task.take_ready, within the limits of the group
-- (group_settings.max_running, key_limit, rate_limit; long_task.key_limit), in turns across
-- keys for a fair-share group (group_settings.fair_share: long_task.take_fair). A group without
-- limits, or no group (a consumer across groups: consume_topic goes group by group while any
-- group is limited), takes straight from the ring.
-- Under the group's limit lock (ns_limit, group id: the limited claims of a group run one at a
-- time, so counts cannot race) it counts the group's running tasks (AE, AC: a lost node's runs
-- count until they are handed back) and takes at most
--   max_running - running, and at most the tokens in the group's bucket (refilled at rate_limit
--   per rate_interval, holding at most rate_limit: the burst), and of each key at most its
--   limit's worth and its own bucket's tokens (long_task.key_limit rows with a rate),
-- passing over entries of keys at their limit (long_task.key_limits) without taking them. An
-- entry whose key reaches its limit within this call goes back onto the ring. What it costs
-- (docs/queue.md, "Limits"): while no key can reach its limit within the call (the lowest limit
-- any key can have leaves at least the call's worth, and no running key is closer to its limit
-- than that; no key has a rate of its own) the entries come straight off the ring, the keys at
-- their limit passed over; else each round's entries are counted per key, the keys met for the
-- first time looked up all at once and the entries over a limit put back in one statement.
-- The caller claims
-- the tasks in the same transaction (their AE is what the next claim counts). A claim cut short
-- by an empty bucket marks it starved and asks the coordinator's scheduler ('sched') to wake the
-- group when the next token is due (long_task.rate_wake); the end of a run of a limited group
-- wakes its nodes (task_after_write).
CREATE OR REPLACE FUNCTION long_task.take_limited(
    p_n integer, p_group_id integer, p_worker_id bigint, p_topics text[], p_commands boolean,
    p_pattern text)
RETURNS TABLE (task_id bigint, lsc timestamptz, concurrency_key text)
LANGUAGE plpgsql AS $$
DECLARE
    s long_task.group_settings%ROWTYPE;
    allow integer := p_n;
    running integer;
    tokens double precision;
    per_sec double precision;
    by_tokens boolean := false;
    keyed boolean;
    -- takes turns across keys (group_settings.fair_share; a group with key_limit rows only has
    -- no settings row)
    fair boolean;
    keys text[];
    lefts integer[];
    blocked text[];
    k integer;
    got integer := 0;
    asked integer;
    seen integer;
    -- the bucket's clock: read once the lock is held (below)
    at timestamptz;
    -- per key met: its rate (NULL: none), the tokens in its bucket now, and those taken
    krates integer[] := '{}';
    kints interval[] := '{}';
    -- the lowest concurrency limit of any key (NULL: none), whether any key has a rate
    kmin integer;
    krated boolean;
    -- the entries came straight, nothing to count per key
    straight boolean := false;
    ktokens double precision[] := '{}';
    kused integer[] := '{}';
    kstarved boolean[] := '{}';
    -- a round's candidates, and those that go back onto the ring
    c_ids bigint[];
    c_lscs timestamptz[];
    c_keys text[];
    back_ids bigint[];
    back_lscs timestamptz[];
BEGIN
    IF p_group_id IS NULL OR NOT long_task.group_limited(p_group_id) THEN
        RETURN QUERY SELECT r.task_id, r.lsc, r.concurrency_key
                       FROM long_task.take_ready(p_n, p_group_id, p_worker_id, p_topics, p_commands, p_pattern) r;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(long_task.ns_limit(), p_group_id);
    at := clock_timestamp();
    -- (a group with only key_limit rows has no settings row: every setting is NULL)
    SELECT * INTO s FROM long_task.group_settings g WHERE g.group_id = p_group_id;
    IF s.max_running IS NOT NULL THEN
        SELECT count(*) INTO running FROM long_task.task t
         WHERE t.group_id = p_group_id AND t.state_id IN ('AE', 'AC') AND t.attempt > 0;
        allow := least(allow, s.max_running - running);
    END IF;
    IF s.rate_limit IS NOT NULL THEN
        per_sec := s.rate_limit / extract(epoch FROM s.rate_interval);
        SELECT least(s.rate_limit, b.tokens + per_sec * greatest(extract(epoch FROM at - b.refilled_at), 0))
          INTO tokens FROM long_task.rate_bucket b WHERE b.group_id = p_group_id AND b.key = '';
        tokens := coalesce(tokens, s.rate_limit);
        IF floor(tokens) < allow THEN
            allow := floor(tokens)::integer;
            by_tokens := true;
        END IF;
    END IF;
    fair := coalesce(s.fair_share, false);
    keyed := s.key_limit IS NOT NULL OR EXISTS (SELECT 1 FROM long_task.key_limit kl WHERE kl.group_id = p_group_id);
    IF allow > 0 AND NOT keyed AND fair THEN
        RETURN QUERY SELECT r.task_id, r.lsc, r.concurrency_key
                       FROM long_task.take_fair(allow, p_group_id, p_worker_id, p_topics, p_commands, p_pattern, '{}') r;
        GET DIAGNOSTICS got = ROW_COUNT;
    ELSIF allow > 0 AND NOT keyed THEN
        RETURN QUERY SELECT r.task_id, r.lsc, r.concurrency_key
                       FROM long_task.take_ready(allow, p_group_id, p_worker_id, p_topics, p_commands, p_pattern) r;
        GET DIAGNOSTICS got = ROW_COUNT;
    ELSIF allow > 0 THEN
        -- the lowest concurrency limit a key can have, and whether any key has a rate of its own
        SELECT least(min(kl.max_running), s.key_limit), coalesce(bool_or(kl.rate_limit IS NOT NULL), false)
          INTO kmin, krated
          FROM long_task.key_limit kl WHERE kl.group_id = p_group_id;
        -- the keys met, each with the starts left to it (NULL: its concurrency is not limited),
        -- its rate (NULL: none of its own), the tokens in its bucket now and those taken: first
        -- the running keys that have a limit and might reach it in this call (more than kmin -
        -- allow running: any other has at least allow starts left), in one statement
        SELECT coalesce(array_agg(l.key), '{}'), coalesce(array_agg(l.max_running - r.n), '{}'),
               coalesce(array_agg(l.rate_limit), '{}'), coalesce(array_agg(l.rate_interval), '{}')
          INTO keys, lefts, krates, kints
          FROM (SELECT t.concurrency_key AS key, count(*)::integer AS n
                  FROM long_task.task t
                 WHERE t.group_id = p_group_id AND t.state_id IN ('AE', 'AC') AND t.attempt > 0
                   AND t.concurrency_key IS NOT NULL
                 GROUP BY t.concurrency_key
                HAVING count(*) > kmin - allow) r
         CROSS JOIN LATERAL long_task.key_limits(p_group_id, ARRAY[r.key]) l
         WHERE l.max_running IS NOT NULL;
        blocked := ARRAY(SELECT u.k FROM unnest(keys, lefts) u(k, l) WHERE u.l <= 0);
        IF NOT krated AND (kmin IS NULL OR kmin >= allow)
           AND NOT EXISTS (SELECT 1 FROM unnest(lefts) u(l) WHERE u.l > 0 AND u.l < allow) THEN
            -- no key can reach its limit in this call (the limits do not bind): the entries come
            -- straight, passing over the keys at their limit
            RETURN QUERY SELECT * FROM long_task.take_fair(allow, p_group_id, p_worker_id, p_topics, p_commands,
                                                           p_pattern, blocked) WHERE fair
                         UNION ALL
                         SELECT * FROM long_task.take_ready(allow, p_group_id, p_worker_id, p_topics, p_commands,
                                                            p_pattern, blocked) WHERE NOT fair;
            GET DIAGNOSTICS got = ROW_COUNT;
            straight := true;
        END IF;
        WHILE NOT straight AND got < allow LOOP
            asked := allow - got;
            -- the candidates, in claim order (or in turns)
            SELECT coalesce(array_agg(c.task_id), '{}'), coalesce(array_agg(c.lsc), '{}'),
                   coalesce(array_agg(c.concurrency_key), '{}')
              INTO c_ids, c_lscs, c_keys
              FROM (SELECT * FROM long_task.take_fair(asked, p_group_id, p_worker_id, p_topics, p_commands,
                                                      p_pattern, blocked) WHERE fair
                    UNION ALL
                    SELECT * FROM long_task.take_ready(asked, p_group_id, p_worker_id, p_topics, p_commands,
                                                       p_pattern, blocked) WHERE NOT fair) c;
            seen := cardinality(c_ids);
            EXIT WHEN seen = 0;
            -- the keys met for the first time in this call, all at once
            SELECT keys || coalesce(array_agg(l.key), '{}'), lefts || coalesce(array_agg(l.max_running), '{}'),
                   krates || coalesce(array_agg(l.rate_limit), '{}'),
                   kints || coalesce(array_agg(l.rate_interval), '{}')
              INTO keys, lefts, krates, kints
              FROM long_task.key_limits(p_group_id, ARRAY(
                       SELECT u.k FROM unnest(c_keys) u(k) WHERE NOT u.k = ANY (keys))) l;
            IF cardinality(ktokens) < cardinality(keys) THEN
                -- the buckets of the new keys with a rate of their own
                SELECT ktokens || array_agg(CASE WHEN u.rate IS NOT NULL THEN coalesce(
                           (SELECT least(u.rate, b.tokens + u.rate / extract(epoch FROM u.per)
                                                 * greatest(extract(epoch FROM at - b.refilled_at), 0))
                              FROM long_task.rate_bucket b WHERE b.group_id = p_group_id AND b.key = u.key),
                           u.rate) END ORDER BY u.o)
                  INTO ktokens
                  FROM unnest(keys[cardinality(ktokens) + 1:], krates[cardinality(ktokens) + 1:],
                              kints[cardinality(ktokens) + 1:]) WITH ORDINALITY AS u(key, rate, per, o);
                kused := kused || array_fill(0, ARRAY[cardinality(keys) - cardinality(kused)]);
                kstarved := kstarved || array_fill(false, ARRAY[cardinality(keys) - cardinality(kstarved)]);
            END IF;
            back_ids := '{}'; back_lscs := '{}';
            FOR i IN 1 .. seen LOOP
                IF c_keys[i] IS NOT NULL THEN
                    k := array_position(keys, c_keys[i]);
                    IF krates[k] IS NOT NULL AND ktokens[k] - kused[k] < 1 THEN
                        -- its bucket is empty: back onto the ring, and the key sits out
                        kstarved[k] := true;
                        lefts[k] := 0;
                    END IF;
                    IF lefts[k] <= 0 THEN
                        -- its key reached its limit in this call: back onto the ring (below)
                        back_ids := back_ids || c_ids[i];
                        back_lscs := back_lscs || c_lscs[i];
                        CONTINUE;
                    END IF;
                    lefts[k] := lefts[k] - 1;
                    kused[k] := kused[k] + 1;
                    IF krates[k] IS NOT NULL AND ktokens[k] - kused[k] < 1 THEN
                        lefts[k] := 0;
                    END IF;
                    IF lefts[k] = 0 THEN
                        blocked := blocked || c_keys[i];
                    END IF;
                END IF;
                task_id := c_ids[i];
                lsc := c_lscs[i];
                concurrency_key := c_keys[i];
                RETURN NEXT;
                got := got + 1;
            END LOOP;
            IF cardinality(back_ids) > 0 THEN
                -- entries of keys at their limit go back onto the ring (from the row, if it
                -- still waits as the entry says; else the entry was stale anyway)
                INSERT INTO long_task.ready (slot, group_id, priority, lsc, task_id, topic, has_command,
                                             worker_id, concurrency_key)
                SELECT long_task.ready_insert_slot(), t.group_id, t.priority, t.last_state_change, t.id,
                       t.topic, t.command IS NOT NULL, t.worker_id, t.concurrency_key
                  FROM unnest(back_ids, back_lscs) AS b(id, lsc)
                  JOIN long_task.task t ON t.id = b.id
                 WHERE t.state_id = 'AW' AND t.last_state_change = b.lsc;
            END IF;
            EXIT WHEN seen < asked OR got >= allow;
        END LOOP;
    END IF;
    -- the buckets this call used: the group's (key '') and those of the keys with a rate of
    -- their own that it met; a starved one asks the coordinator's scheduler for a wake
    IF s.rate_limit IS NULL AND cardinality(array_remove(krates, NULL)) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO long_task.rate_bucket AS b (group_id, key, tokens, refilled_at, starved)
    SELECT p_group_id, u.key, u.left_tokens, at, u.empty
      FROM (SELECT ''::text AS key, tokens - got AS left_tokens, by_tokens AND got >= allow AS empty
             WHERE s.rate_limit IS NOT NULL
            UNION ALL
            SELECT k.key, k.had - k.used, k.empty
              FROM unnest(keys[1:cardinality(ktokens)], krates, ktokens, kused, kstarved)
                   AS k(key, rate, had, used, empty)
             WHERE k.rate IS NOT NULL) u
    ON CONFLICT (group_id, key) DO UPDATE
       SET tokens = excluded.tokens, refilled_at = excluded.refilled_at, starved = excluded.starved;
    IF (s.rate_limit IS NOT NULL AND by_tokens AND got >= allow) OR true = ANY (kstarved) THEN
        PERFORM pg_notify(long_task.channel(p_group_id), 'sched');
    END IF;
END
$$;
