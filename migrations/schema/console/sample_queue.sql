-- One queue-depth sample of a group for the console's chart (long_task.queue_sample): waiting and
-- running tasks and the oldest wait now, stored under the current minute (a second sample in the
-- same minute replaces the first), and samples older than a day deleted. Written by the group's
-- coordinator once a minute, and only while p_term is still the group's term (a deposed
-- coordinator writes nothing). Returns whether it wrote.
CREATE OR REPLACE FUNCTION long_task.sample_queue(p_group_id integer, p_term bigint)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM long_task.coordinator c
                    WHERE c.group_id = p_group_id AND c.term = p_term) THEN
        RETURN false;
    END IF;
    INSERT INTO long_task.queue_sample AS s (group_id, at, waiting, running, oldest_wait)
    SELECT p_group_id, date_trunc('minute', now()),
           count(*) FILTER (WHERE t.state_id = 'AW'),
           count(*) FILTER (WHERE t.state_id IN ('AE', 'AC')),
           extract(epoch FROM now() - min(t.last_state_change) FILTER (WHERE t.state_id = 'AW'))::float8
      FROM long_task.task t
     WHERE t.group_id = p_group_id AND t.state_id IN ('AW', 'AE', 'AC')
    ON CONFLICT (group_id, at) DO UPDATE
       SET waiting = EXCLUDED.waiting, running = EXCLUDED.running, oldest_wait = EXCLUDED.oldest_wait;
    DELETE FROM long_task.queue_sample s
     WHERE s.group_id = p_group_id AND s.at < now() - interval '1 day';
    RETURN true;
END
$$;
