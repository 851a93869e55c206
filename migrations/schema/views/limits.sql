-- Every concurrency and rate limit with its current usage (docs/queue.md, "Limits"):
--   kind 'group'  group_settings.max_running: running tasks of the group (AE, AC), waiting
--                 entries on the ready ring
--   kind 'key'    each key that runs or waits under a limit (long_task.key_limit_of): its
--                 running tasks and waiting entries
--   kind 'rate'   group_settings.rate_limit per rate_interval: the tokens left now
--   kind 'key rate'  a long_task.key_limit row's rate_limit: waiting entries of its keys, the
--                 tokens left of the bucket of the key it names (a pattern: of that text)
-- Waiting counts entries of the ready ring (claimable tasks; an entry a claim has not yet found
-- stale counts too). Read with the reader's privileges: row-level security applies to the
-- tasks, and the ring's entries are limited here the same way (long_task.accessible_groups).
CREATE OR REPLACE VIEW long_task.limits AS
WITH ready AS (
    SELECT r.group_id, r.concurrency_key FROM long_task.ready r
     WHERE (SELECT long_task.accessible_groups(current_user)) IS NULL
        OR r.group_id = ANY ((SELECT long_task.accessible_groups(current_user))::integer[])
)
SELECT s.group_id, 'group'::text AS kind, NULL::text AS key, s.max_running AS max_running,
       (SELECT count(*) FROM long_task.task t
         WHERE t.group_id = s.group_id AND t.state_id IN ('AE', 'AC') AND t.attempt > 0) AS running,
       (SELECT count(*) FROM ready r WHERE r.group_id = s.group_id) AS waiting,
       NULL::double precision AS tokens_left
  FROM long_task.group_settings s
 WHERE s.max_running IS NOT NULL
UNION ALL
SELECT k.group_id, 'key', k.key, long_task.key_limit_of(k.group_id, k.key),
       sum(k.running)::bigint, sum(k.waiting)::bigint, NULL
  FROM (SELECT t.group_id, t.concurrency_key AS key, count(*) AS running, 0 AS waiting
          FROM long_task.task t
         WHERE t.state_id IN ('AE', 'AC') AND t.attempt > 0 AND t.concurrency_key IS NOT NULL
           AND t.group_id IN (SELECT s.group_id FROM long_task.group_settings s WHERE s.key_limit IS NOT NULL
                              UNION SELECT kl.group_id FROM long_task.key_limit kl)
         GROUP BY 1, 2
        UNION ALL
        SELECT r.group_id, r.concurrency_key, 0, count(*)
          FROM ready r
         WHERE r.concurrency_key IS NOT NULL
         GROUP BY 1, 2) k
 WHERE long_task.key_limit_of(k.group_id, k.key) IS NOT NULL
 GROUP BY k.group_id, k.key
UNION ALL
SELECT s.group_id, 'rate', NULL, s.rate_limit, NULL,
       (SELECT count(*) FROM ready r WHERE r.group_id = s.group_id),
       coalesce(least(s.rate_limit, b.tokens + s.rate_limit / extract(epoch FROM s.rate_interval)
                                    * greatest(extract(epoch FROM clock_timestamp() - b.refilled_at), 0)),
                s.rate_limit)
  FROM long_task.group_settings s
  LEFT JOIN long_task.rate_bucket b ON b.group_id = s.group_id AND b.key = ''
 WHERE s.rate_limit IS NOT NULL
UNION ALL
SELECT kl.group_id, 'key rate', kl.key_pattern, kl.rate_limit, NULL,
       (SELECT count(*) FROM ready r WHERE r.group_id = kl.group_id
           AND (r.concurrency_key = kl.key_pattern OR r.concurrency_key LIKE kl.key_pattern)),
       coalesce(least(kl.rate_limit, b.tokens + kl.rate_limit / extract(epoch FROM kl.rate_interval)
                                     * greatest(extract(epoch FROM clock_timestamp() - b.refilled_at), 0)),
                kl.rate_limit)
  FROM long_task.key_limit kl
  LEFT JOIN long_task.rate_bucket b ON b.group_id = kl.group_id AND b.key = kl.key_pattern
 WHERE kl.rate_limit IS NOT NULL;
