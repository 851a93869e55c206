-- Attempts in progress, by nodes (worker_id > 0) and SQL consumers (worker_id < 0).
CREATE OR REPLACE VIEW long_task.running AS
    SELECT t.id, t.group_id, t.topic, t.command, t.state_id, t.worker_id, w.node_name, t.run_id,
           t.attempt, t.max_attempts, t.started, now() - t.started AS running_for, t.timeout,
           t.lease_until, t.params
      FROM long_task.task t
      LEFT JOIN long_task.worker w ON w.id = t.worker_id
     WHERE t.state_id IN ('AE', 'AC');
