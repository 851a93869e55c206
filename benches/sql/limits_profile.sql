-- The limits' cost at the SQL level, without a node or a client in the way (docs/queue.md,
-- "Limits: what they cost"): procedures for a scratch database migrated by `pgtaskd migrate`
-- (or by the schema of another commit, to compare two versions side by side). Not a migration.
-- Load with `psql -f benches/sql/limits_profile.sql`, then:
--   CALL prof.drain(3000, 100, '<setup SQL, or empty>');  -- consume(100) then ack_many, each
--                                                          -- in its own transaction: ms per call
--   CALL prof.fairlat(10000, 500);                         -- fair share, 10,000 keys waiting:
--                                                          -- consume(4) p50 / p99
-- Each turns the ring itself between calls (as a coordinator would, untimed). With
-- pg_stat_statements (track = all, track_planning = on) it says where the time goes.
CREATE SCHEMA IF NOT EXISTS prof;

CREATE OR REPLACE PROCEDURE prof.reset() LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM long_task.group_settings;
    DELETE FROM long_task.key_limit;
    DELETE FROM long_task.rate_bucket;
    DELETE FROM long_task.fair_key;
    DELETE FROM long_task.task;
    TRUNCATE long_task.ready;
END
$$;

CREATE OR REPLACE PROCEDURE prof.drain(p_n int, p_keys int, p_setup text, p_batch int DEFAULT 100)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    t0 timestamptz;
    t_cons interval := '0';
    calls int := 0;
    lat double precision[] := '{}';
BEGIN
    CALL prof.reset();
    IF p_setup <> '' THEN
        EXECUTE p_setup;
    END IF;
    INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
    SELECT 0, 'AW', 'bench', CASE WHEN p_keys > 0 THEN 'k' || (i % p_keys) END
      FROM generate_series(1, p_n) i;
    COMMIT;
    LOOP
        PERFORM long_task.rotate_ready();
        COMMIT;
        t0 := clock_timestamp();
        ids := ARRAY(SELECT c.id FROM long_task.consume(p_batch) c);
        lat := lat || extract(epoch FROM clock_timestamp() - t0) * 1000;
        t_cons := t_cons + (clock_timestamp() - t0);
        COMMIT;
        EXIT WHEN cardinality(ids) = 0;
        PERFORM count(*) FROM long_task.ack_many(ids);
        COMMIT;
        calls := calls + 1;
    END LOOP;
    RAISE NOTICE 'consume % ms/call (% calls; p50 % ms, p99 % ms)',
        round((extract(epoch FROM t_cons) * 1000 / calls)::numeric, 2), calls,
        round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(lat) x)::numeric, 2),
        round((SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY x) FROM unnest(lat) x)::numeric, 2);
    CALL prof.reset();
END
$$;

CREATE OR REPLACE PROCEDURE prof.fairlat(p_keys int, p_calls int)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    t0 timestamptz;
    lat double precision[] := '{}';
BEGIN
    CALL prof.reset();
    INSERT INTO long_task.group_settings (group_id, fair_share) VALUES (0, true);
    INSERT INTO long_task.task (group_id, state_id, topic, concurrency_key)
    SELECT 0, 'AW', 'bench', 'key-' || (i % p_keys) FROM generate_series(1, p_keys * 2) i;
    ANALYZE long_task.fair_key;
    COMMIT;
    FOR i IN 1 .. p_calls LOOP
        PERFORM long_task.rotate_ready();
        COMMIT;
        t0 := clock_timestamp();
        ids := ARRAY(SELECT c.id FROM long_task.consume(4) c);
        lat := lat || extract(epoch FROM clock_timestamp() - t0) * 1000;
        COMMIT;
        PERFORM count(*) FROM long_task.ack_many(ids);
        COMMIT;
    END LOOP;
    RAISE NOTICE 'fair-share consume(4), % keys waiting: p50 % ms, p99 % ms', p_keys,
        round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(lat) x)::numeric, 2),
        round((SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY x) FROM unnest(lat) x)::numeric, 2);
    CALL prof.reset();
END
$$;
