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
-- passing over entries of keys at their limit (long_task.key_limit_of) without taking them. An
-- entry whose key reaches its limit within this call goes back onto the ring. The caller claims
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
    e record;
    k integer;
    got integer := 0;
    asked integer;
    seen integer;
    -- the bucket's clock: read once the lock is held (below)
    at timestamptz;
    -- per key met: its rate (NULL: none), the tokens in its bucket now, and those taken
    krates integer[] := '{}';
    kpersec double precision[] := '{}';
    ktokens double precision[] := '{}';
    kused integer[] := '{}';
    kstarved boolean[] := '{}';
    kr record;
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
        -- the starts left for each key met (running keys with a limit first)
        SELECT coalesce(array_agg(x.key), '{}'), coalesce(array_agg(x.lim - x.n), '{}') INTO keys, lefts
          FROM (SELECT t.concurrency_key AS key, count(*)::integer AS n,
                       long_task.key_limit_of(p_group_id, t.concurrency_key) AS lim
                  FROM long_task.task t
                 WHERE t.group_id = p_group_id AND t.state_id IN ('AE', 'AC') AND t.attempt > 0
                   AND t.concurrency_key IS NOT NULL
                 GROUP BY t.concurrency_key) x
         WHERE x.lim IS NOT NULL;
        blocked := ARRAY(SELECT u.k FROM unnest(keys, lefts) u(k, l) WHERE u.l <= 0);
        LOOP
            asked := allow - got;
            seen := 0;
            FOR e IN SELECT * FROM long_task.take_fair(asked, p_group_id, p_worker_id, p_topics, p_commands,
                                                       p_pattern, blocked) WHERE fair
                     UNION ALL
                     SELECT * FROM long_task.take_ready(asked, p_group_id, p_worker_id, p_topics, p_commands,
                                                        p_pattern, blocked) WHERE NOT fair LOOP
                seen := seen + 1;
                IF e.concurrency_key IS NOT NULL THEN
                    k := array_position(keys, e.concurrency_key);
                    IF k IS NULL THEN
                        keys := keys || e.concurrency_key;
                        lefts := lefts || coalesce(long_task.key_limit_of(p_group_id, e.concurrency_key), 2147483647);
                        k := cardinality(keys);
                    END IF;
                    IF cardinality(krates) < k THEN
                        -- the key's rate, met for the first time in this call (running keys
                        -- were listed above without it)
                        FOR i IN cardinality(krates) + 1 .. k LOOP
                            SELECT * INTO kr FROM long_task.key_rate_of(p_group_id, keys[i]);
                            krates := krates || kr.rate_limit;
                            kpersec := kpersec || (kr.rate_limit / extract(epoch FROM kr.rate_interval))::double precision;
                            ktokens := ktokens || CASE WHEN kr.rate_limit IS NOT NULL THEN coalesce(
                                (SELECT least(kr.rate_limit, b.tokens + kr.rate_limit / extract(epoch FROM kr.rate_interval)
                                                             * greatest(extract(epoch FROM at - b.refilled_at), 0))
                                   FROM long_task.rate_bucket b WHERE b.group_id = p_group_id AND b.key = keys[i]),
                                kr.rate_limit) END;
                            kused := kused || 0;
                            kstarved := kstarved || false;
                        END LOOP;
                    END IF;
                    IF krates[k] IS NOT NULL AND ktokens[k] - kused[k] < 1 THEN
                        -- its bucket is empty: back onto the ring, and the key sits out
                        kstarved[k] := true;
                        lefts[k] := 0;
                    END IF;
                    IF lefts[k] <= 0 THEN
                        -- its key reached its limit in this call: back onto the ring (from the row,
                        -- if it still waits as the entry says; else the entry was stale anyway)
                        INSERT INTO long_task.ready (slot, group_id, priority, lsc, task_id, topic, has_command,
                                                     worker_id, concurrency_key)
                        SELECT long_task.ready_insert_slot(), t.group_id, t.priority, t.last_state_change, t.id,
                               t.topic, t.command IS NOT NULL, t.worker_id, t.concurrency_key
                          FROM long_task.task t
                         WHERE t.id = e.task_id AND t.state_id = 'AW' AND t.last_state_change = e.lsc;
                        CONTINUE;
                    END IF;
                    lefts[k] := lefts[k] - 1;
                    kused[k] := kused[k] + 1;
                    IF krates[k] IS NOT NULL AND ktokens[k] - kused[k] < 1 THEN
                        lefts[k] := 0;
                    END IF;
                    IF lefts[k] = 0 THEN
                        blocked := blocked || e.concurrency_key;
                    END IF;
                END IF;
                task_id := e.task_id;
                lsc := e.lsc;
                concurrency_key := e.concurrency_key;
                RETURN NEXT;
                got := got + 1;
            END LOOP;
            EXIT WHEN seen < asked OR got >= allow;
        END LOOP;
    END IF;
    -- the buckets this call used: the group's (key '') and those of the keys with a rate of
    -- their own that it met; a starved one asks the coordinator's scheduler for a wake
    INSERT INTO long_task.rate_bucket AS b (group_id, key, tokens, refilled_at, starved)
    SELECT p_group_id, u.key, u.left_tokens, at, u.empty
      FROM (SELECT ''::text AS key, tokens - got AS left_tokens, by_tokens AND got >= allow AS empty
             WHERE s.rate_limit IS NOT NULL
            UNION ALL
            SELECT k.key, k.had - k.used, k.empty
              FROM unnest(keys[1:cardinality(krates)], krates, ktokens, kused, kstarved)
                   AS k(key, rate, had, used, empty)
             WHERE k.rate IS NOT NULL) u
    ON CONFLICT (group_id, key) DO UPDATE
       SET tokens = excluded.tokens, refilled_at = excluded.refilled_at, starved = excluded.starved;
    IF (s.rate_limit IS NOT NULL AND by_tokens AND got >= allow) OR true = ANY (kstarved) THEN
        PERFORM pg_notify(long_task.channel(p_group_id), 'sched');
    END IF;
END
$$;
