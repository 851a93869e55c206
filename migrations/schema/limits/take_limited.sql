-- Takes entries off the ready ring like long_task.take_ready, within the limits of the group
-- (group_settings.max_running, key_limit, rate_limit; long_task.key_limit), in turns across
-- keys for a fair-share group (group_settings.fair_share: long_task.take_fair). A group without
-- limits, or no group (a consumer across groups: consume_topic goes group by group while any
-- group is limited), takes straight from the ring. Running means AE or AC (a lost node's runs
-- count until they are handed back). The caller claims the tasks in the same transaction (their
-- AE is what later claims count).
--
-- Two paths, one rule. A group has K = long_task.limit_slots() claim slots (advisory locks
-- ns_limit_slot() + i, group id). With L = max_running, S = L / 2K (integer division; NULL L:
-- no group bound), kmin = the lowest limit any key can have (key_limit and every override) and
-- m = kmin / 2K, a claim that holds H of the K slots, h of them taken by this call, reads
-- (after taking them) r running in the group and r_k of each key, and takes
--   t   <= h*S and t <= L - r - (K - H)*S                   (the group), and of each key k
--   t_k <= h*m and t_k <= limit_k - r_k - (K - H)*m         (its limit, a key without one: h*m)
-- A claim holding all K slots has no other claim beside it (each holds a slot), so the h*S and
-- h*m shares drop: t <= L - r, t_k <= limit_k - r_k (K*m for a key not near its limit). The
-- counted path holds all K slots and ns_limit (long_task.lock_limit_group) and counts exactly;
-- the token buckets of rate limits and the turns of fair share are kept only there. The shared path (no rate, no fair share, no key
-- rate, L and kmin at least 2K) holds one or more slots (try-locks; a claim finding none free
-- and holding none waits for one) and takes straight off the ring, passing over the keys with
-- nothing left and putting back onto the ring what is over a key's share; where the rule leaves
-- less than the claim wants because a limit is near, it takes the group whole if ns_limit is free
-- (a try: it never waits holding a slot) and counts exactly, else takes what the rule leaves.
--
-- Why the sum never exceeds a limit. Take any moment T and, among the calls with runs of the
-- group (of key k) running at T, the one that read last, c, at time tau, of transaction Y holding
-- H slots. A run at T was started by (a) a transaction committed before tau: visible to c's
-- read and still running, so counted in r; (b) Y itself: its own rows, counted in r; or (c) a
-- transaction X not committed at tau: it read before tau (c read last), after taking its slots,
-- and releases them only after its commit is visible (locks are released after the commit), so
-- at tau it held H_X slots other than Y's, and took at most H_X*S (H_X*m of key k): each of its
-- calls at most h*S for the h slots that call took. A transaction holding all K slots is never
-- beside another. So at T running <= r + (K - H)*S + t <= L, and the same for every key with m.
-- Runs ending on any node only lower the count, and an end not committed still counts (the safe
-- side); a lost node's claim in flight is rolled back with its session and frees its slots; a
-- hand-back moves runs out of AE, lowering the count. S and m come from the limits, which every
-- transaction in flight beside c has read the same: a change of a group's limits (an UPDATE of
-- group_settings, any write of key_limit) takes the group whole (long_task.limit_change_lock),
-- so it waits for the claims in flight and the claims after it read the new limits; a lowered
-- limit holds from the first claim after its commit (the runs above it go on). A pause takes
-- ns_pause against every claim (long_task.claim), as before.
-- Deadlocks: the counted path takes ns_limit, then the slots in order; the shared path only
-- tries (it waits for one slot only while holding none), so it never waits on a transaction that
-- waits for it. A transaction that claims and then changes the same group's limits may wait on a
-- claim that waits for it: PostgreSQL then aborts one of them.
--
-- What it costs (docs/queue.md, "Limits"): the shared path reads the settings twice, counts the
-- group's running tasks (and of each key that may be near its limit: more than kmin - K*m
-- running) once, and takes like take_ready; claims of a group far from its limits run side by
-- side, up to K of them, each committing on its own. The counted path is the previous one:
-- while no key can reach its limit within the call (the lowest limit any key can have leaves at
-- least the call's worth, and no running key is closer to its limit than that; no key has a rate
-- of its own) the entries come straight off the ring, the keys at their limit passed over; else
-- each round's entries are counted per key, the keys met for the first time looked up all at
-- once and the entries over a limit put back in one statement. A claim cut short by an empty
-- bucket marks it starved and asks the coordinator's scheduler ('sched') to wake the group when
-- the next token is due (long_task.rate_wake); the end of a run of a limited group wakes its
-- nodes (task_after_write).
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
    -- the shared path: K, the slots this transaction holds of the group (a bit each, recorded in
    -- the transaction: long_task.limit_slots_<group>), how many this call took, and of them all
    ks constant integer := long_task.limit_slots();
    guc constant text := 'long_task.limit_slots_' || replace(p_group_id::text, '-', 'm');
    mask integer;
    h integer := 0;
    held integer;
    own integer;
    si integer;
    -- S and m of the rule (NULL: no group bound, no key bound), the keys that may be near their
    -- limit and what each may still take, and whether a limit is near (count exactly instead)
    sz integer;
    m integer;
    kshare integer;
    nkeys text[];
    ncaps integer[];
    nlefts integer[];
    near boolean := false;
    shared_ok boolean;
BEGIN
    IF p_group_id IS NULL OR NOT long_task.group_limited(p_group_id) THEN
        RETURN QUERY SELECT r.task_id, r.lsc, r.concurrency_key
                       FROM long_task.take_ready(p_n, p_group_id, p_worker_id, p_topics, p_commands, p_pattern) r;
        RETURN;
    END IF;
    mask := coalesce(nullif(current_setting(guc, true), ''), '0')::integer;
    -- (a group with only key_limit rows has no settings row: every setting is NULL)
    SELECT * INTO s FROM long_task.group_settings g WHERE g.group_id = p_group_id;
    IF mask <> (1 << ks) - 1 AND s.rate_limit IS NULL AND NOT coalesce(s.fair_share, false)
       AND coalesce(s.max_running >= 2 * ks, true) AND coalesce(s.key_limit >= 2 * ks, true) THEN
        -- the shared path: as many free slots as the claim's size needs (a slot's share is S),
        -- tried from one of this backend's own, so that claimers spread over the slots
        own := pg_backend_pid() % ks;
        FOR j IN 0 .. ks - 1 LOOP
            si := (own + j) % ks;
            CONTINUE WHEN mask & (1 << si) <> 0;
            IF pg_try_advisory_xact_lock(long_task.ns_limit_slot() + si, p_group_id) THEN
                mask := mask | (1 << si);
                h := h + 1;
                EXIT WHEN s.max_running IS NULL OR h * (s.max_running / (2 * ks)) >= p_n;
            END IF;
        END LOOP;
        IF h = 0 AND mask = 0 THEN
            -- every slot busy, none held: wait for one (its holder never waits for us)
            PERFORM pg_advisory_xact_lock(long_task.ns_limit_slot() + own, p_group_id);
            mask := 1 << own;
            h := 1;
        END IF;
        PERFORM set_config(guc, mask::text, true);
        held := length(replace(mask::bit(32)::text, '0', ''));
        -- the limits again, now that the slots are held: every claim in flight beside this one
        -- read the same (long_task.limit_change_lock)
        SELECT * INTO s FROM long_task.group_settings g WHERE g.group_id = p_group_id;
        SELECT least(min(kl.max_running), s.key_limit), coalesce(bool_or(kl.rate_limit IS NOT NULL), false),
               s.key_limit IS NOT NULL OR count(*) > 0
          INTO kmin, krated, keyed
          FROM long_task.key_limit kl WHERE kl.group_id = p_group_id;
        shared_ok := h > 0 AND s.rate_limit IS NULL AND NOT coalesce(s.fair_share, false) AND NOT krated
                     AND coalesce(s.max_running >= 2 * ks, true) AND coalesce(kmin >= 2 * ks, true);
        IF shared_ok THEN
            IF s.max_running IS NOT NULL THEN
                sz := s.max_running / (2 * ks);
                SELECT count(*) INTO running FROM long_task.task t
                 WHERE t.group_id = p_group_id AND t.state_id IN ('AE', 'AC') AND t.attempt > 0;
                -- (holding every slot, no other claim is in flight: no share of its own to keep)
                allow := least(allow, CASE WHEN held < ks THEN h * sz END);
                -- near: the rule leaves less than the claim wants, and counting exactly would
                -- leave more (a group at its limit gets nothing either way)
                near := s.max_running - running - (ks - held) * sz < allow
                        AND s.max_running - running > greatest(s.max_running - running - (ks - held) * sz, 0);
                allow := least(allow, s.max_running - running - (ks - held) * sz);
            END IF;
            IF kmin IS NOT NULL THEN
                m := kmin / (2 * ks);
                -- a key's share: h*m, or K*m holding every slot (what any key not near has left)
                kshare := CASE WHEN held < ks THEN h * m ELSE ks * m END;
                -- the running keys that may be near their limit (more than kmin - K*m running:
                -- any other has at least K*m left, so its share h*m holds), and what each may take;
                -- none while the whole group runs no more than that (the common case: one count)
                IF running IS NULL THEN
                    SELECT count(*) INTO running FROM long_task.task t
                     WHERE t.group_id = p_group_id AND t.state_id IN ('AE', 'AC') AND t.attempt > 0;
                END IF;
                nkeys := '{}'; ncaps := '{}'; nlefts := '{}';
                IF running > kmin - ks * m THEN
                    SELECT coalesce(array_agg(l.key), '{}'),
                           coalesce(array_agg(least(kshare, l.max_running - r.n - (ks - held) * m)), '{}'),
                           coalesce(array_agg(l.max_running - r.n), '{}')
                      INTO nkeys, ncaps, nlefts
                      FROM (SELECT t.concurrency_key AS key, count(*)::integer AS n
                              FROM long_task.task t
                             WHERE t.group_id = p_group_id AND t.state_id IN ('AE', 'AC') AND t.attempt > 0
                               AND t.concurrency_key IS NOT NULL
                             GROUP BY t.concurrency_key
                            HAVING count(*) > kmin - ks * m) r
                     CROSS JOIN LATERAL long_task.key_limits(p_group_id, ARRAY[r.key]) l
                     WHERE l.max_running IS NOT NULL;
                END IF;
                near := near OR EXISTS (SELECT 1 FROM unnest(ncaps, nlefts) u(c, l)
                                         WHERE u.c < kshare AND u.l > greatest(u.c, 0));
            END IF;
        END IF;
        IF (NOT shared_ok OR near) AND NOT pg_try_advisory_xact_lock(long_task.ns_limit(), p_group_id) THEN
            -- the group is taken whole by another claim, which waits for our slots: never wait
            -- for it; take what the rule leaves (nothing off the shared path)
            near := false;
            IF NOT shared_ok THEN
                RETURN;
            END IF;
        END IF;
        IF shared_ok AND NOT near THEN
            IF allow <= 0 THEN
                RETURN;
            END IF;
            blocked := ARRAY(SELECT u.k FROM unnest(nkeys, ncaps) u(k, c) WHERE u.c <= 0);
            IF m IS NULL OR (allow <= kshare AND cardinality(nkeys) = 0) THEN
                -- no key bound, or none can pass its share in this call: nothing to put back
                RETURN QUERY SELECT r.task_id, r.lsc, r.concurrency_key
                               FROM long_task.take_ready(allow, p_group_id, p_worker_id, p_topics, p_commands,
                                                         p_pattern, blocked) r;
                RETURN;
            END IF;
            -- straight off the ring; what is over a key's share goes back onto it
            SELECT coalesce(array_agg(r.task_id), '{}'), coalesce(array_agg(r.lsc), '{}'),
                   coalesce(array_agg(r.concurrency_key), '{}')
              INTO c_ids, c_lscs, c_keys
              FROM long_task.take_ready(allow, p_group_id, p_worker_id, p_topics, p_commands,
                                        p_pattern, blocked) r;
            SELECT coalesce(array_agg(u.id ORDER BY u.o) FILTER (WHERE NOT u.keep), '{}'),
                   coalesce(array_agg(u.lsc ORDER BY u.o) FILTER (WHERE NOT u.keep), '{}')
              INTO back_ids, back_lscs
              FROM (SELECT e.id, e.lsc, e.o,
                           e.k IS NULL OR row_number() OVER (PARTITION BY e.k ORDER BY e.o)
                                          <= coalesce(ncaps[array_position(nkeys, e.k)], kshare) AS keep
                      FROM unnest(c_ids, c_lscs, c_keys) WITH ORDINALITY AS e(id, lsc, k, o)) u;
            IF cardinality(back_ids) > 0 THEN
                PERFORM long_task.put_back_ready(back_ids, back_lscs);
            END IF;
            RETURN QUERY SELECT e.id, e.lsc, e.k
                           FROM unnest(c_ids, c_lscs, c_keys) WITH ORDINALITY AS e(id, lsc, k, o)
                          WHERE NOT e.id = ANY (back_ids)
                          ORDER BY e.o;
            RETURN;
        END IF;
        -- a limit is near and ns_limit is ours: the group whole, counted exactly (below)
        allow := p_n;
        running := NULL;
        kmin := NULL;
        krated := NULL;
    ELSIF mask <> 0 AND mask <> (1 << ks) - 1
          AND NOT pg_try_advisory_xact_lock(long_task.ns_limit(), p_group_id) THEN
        -- slots held by an earlier call of this transaction: never wait holding them
        RETURN;
    END IF;
    -- the counted path: the group whole (ns_limit, then every slot: the claims in flight end
    -- first, and none starts before this transaction commits)
    IF mask <> (1 << ks) - 1 THEN
        PERFORM long_task.lock_limit_group(p_group_id);
    END IF;
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
                PERFORM long_task.put_back_ready(back_ids, back_lscs);
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
