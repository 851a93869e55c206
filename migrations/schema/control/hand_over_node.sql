-- Hands a node's work over to the other nodes of its group (an operator's forced hand-over,
-- docs/clustering.md): the node stops claiming (worker.stop 0 -> 1; a stop code already set is
-- kept, it claims nothing either way), then
--   p_kill (the default): each of its running (AE) tasks goes back to AW at once through the
--     one hand-back rule (long_task.hand_back, p_lost = false): not a lost run, not a failed
--     attempt; another node claims it under a new run_id. The 'ctl' notification of that
--     statement makes the node reconcile: running_state says 'handed_over' and it kills the
--     process group (SIGTERM, SIGKILL after kill_grace) and writes nothing; a late outcome of
--     the old run is refused by the run_id fence.
--   NOT p_kill: its runs finish on it as usual; only new tasks go elsewhere.
-- Either way a task pinned to the node (worker_id set by a person) keeps running there (no
-- other node may run it: killing it would only throw its work away), and one being cancelled
-- (AC) ends CC as usual. Resume the node with stop = 0 (UPDATE long_task.worker, or
-- POST /nodes/{id}/stop).
-- Returns one row per run the node had: its task, run and what became of it: 'requeued'
-- (killed and queued again), 'finishing' (left to finish, NOT p_kill), 'pinned' (left running)
-- or 'cancelling'. An unknown node raises no_data_found and changes nothing. Records event
-- 'node_hand_over' (long_task.record_change: who asked) and one 'handed_over' event per
-- re-queued run. SECURITY DEFINER (privileges.sql: pgtaskd_operator's), with the caller's
-- group access checked on the node's group.
-- Claims of the node take ns_hand_over shared (long_task.claim): one that started before this
-- call finishes first (its runs are then handed over too), one that starts later waits for the
-- commit and sees the stop code, so the node never takes back what is handed over.
CREATE OR REPLACE FUNCTION long_task.hand_over_node(p_worker_id bigint, p_kill boolean DEFAULT true)
RETURNS TABLE (task_id bigint, run_id uuid, action text)
LANGUAGE plpgsql AS $$
DECLARE
    v_group integer;
    v_stop smallint;
    v_new_stop smallint;
    v_ids bigint[];
    v_runs uuid[];
    v_actions text[];
BEGIN
    IF p_worker_id IS NULL OR p_kill IS NULL THEN
        RAISE EXCEPTION 'hand_over_node needs a worker id and p_kill (true or false)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM pg_advisory_xact_lock(long_task.ns_hand_over(), (p_worker_id % 2147483647)::integer);
    SELECT w.group_id, w.stop INTO v_group, v_stop
      FROM long_task.worker w WHERE w.id = p_worker_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no node with worker id %', p_worker_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'pgtaskd status --all lists the nodes (long_task.worker)';
    END IF;
    PERFORM long_task.check_group_access(v_group, session_user);
    v_new_stop := CASE WHEN v_stop = 0 THEN 1 ELSE v_stop END;
    IF v_new_stop <> v_stop THEN
        UPDATE long_task.worker w SET stop = v_new_stop WHERE w.id = p_worker_id;
    END IF;

    -- the node's runs, locked: what is left alone, and what is handed over
    SELECT array_agg(r.id ORDER BY r.id), array_agg(r.run_id ORDER BY r.id),
           array_agg(CASE WHEN r.state_id = 'AC' THEN 'cancelling'
                          WHEN r.pinned THEN 'pinned'
                          WHEN p_kill THEN 'requeued'
                          ELSE 'finishing' END ORDER BY r.id)
      INTO v_ids, v_runs, v_actions
      FROM (SELECT t.id, t.run_id, t.state_id, t.pinned FROM long_task.task t
             WHERE t.worker_id = p_worker_id AND t.state_id IN ('AE', 'AC')
               FOR UPDATE) r;
    v_actions := coalesce(v_actions, '{}');
    IF 'requeued' = ANY (v_actions) THEN
        PERFORM 1 FROM long_task.hand_back(
            p_worker_id, 'handed over', NULL,
            ARRAY(SELECT u.id FROM unnest(v_ids, v_actions) AS u(id, a) WHERE u.a = 'requeued'),
            ARRAY(SELECT u.run FROM unnest(v_runs, v_actions) AS u(run, a) WHERE u.a = 'requeued'),
            NULL, NULL, false);
    END IF;
    PERFORM long_task.record_change('node_hand_over', v_group, NULL, p_worker_id, NULL,
        format('%s: %s re-queued, %s finishing, %s pinned, %s cancelling; stop %s -> %s',
               CASE WHEN p_kill THEN 'kill' ELSE 'wait for finish' END,
               cardinality(array_positions(v_actions, 'requeued')),
               cardinality(array_positions(v_actions, 'finishing')),
               cardinality(array_positions(v_actions, 'pinned')),
               cardinality(array_positions(v_actions, 'cancelling')), v_stop, v_new_stop));
    RETURN QUERY SELECT u.id, u.run, u.a FROM unnest(v_ids, v_runs, v_actions) AS u(id, run, a);
END
$$;
