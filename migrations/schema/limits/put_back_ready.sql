-- Puts entries a limited claim took off the ready ring but may not start back onto it (a key
-- over its share or limit: long_task.take_limited), rebuilt from the task row if it still waits
-- as the entry said (else the entry was stale anyway and stays gone). PL/pgSQL: planned once per
-- session.
CREATE OR REPLACE FUNCTION long_task.put_back_ready(p_ids bigint[], p_lscs timestamptz[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO long_task.ready (slot, group_id, priority, lsc, task_id, topic, has_command,
                                 worker_id, concurrency_key)
    SELECT long_task.ready_insert_slot(), t.group_id, t.priority, t.last_state_change, t.id,
           t.topic, t.command IS NOT NULL, t.worker_id, t.concurrency_key
      FROM unnest(p_ids, p_lscs) AS b(id, lsc)
      JOIN long_task.task t ON t.id = b.id
     WHERE t.state_id = 'AW' AND t.last_state_change = b.lsc;
END
$$;
