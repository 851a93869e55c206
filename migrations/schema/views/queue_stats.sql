-- Queue depth per group, topic and state, with the age of the oldest waiting task (a full scan:
-- for monitoring, not for a hot loop).
CREATE OR REPLACE VIEW long_task.queue_stats AS
    SELECT t.group_id, t.topic, t.state_id, count(*) AS tasks,
           max(now() - t.last_state_change) FILTER (WHERE t.state_id = 'AW') AS oldest_waiting,
           count(*) FILTER (WHERE t.state_id = 'AW' AND t.run_after > now()) AS delayed
      FROM long_task.task t
     GROUP BY t.group_id, t.topic, t.state_id;
