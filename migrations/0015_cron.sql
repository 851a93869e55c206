-- pgtaskd schema, version 15: cron schedules next to the periods. A row schedules with a period
-- (shed_period_id × shed_period_count) or with a cron expression (shed_cron, evaluated in
-- shed_timezone, UTC when NULL), never both. next_start stays the row's next planned firing; the
-- coordinator's Scheduler computes cron times (PostgreSQL cannot) and fires a cron row and moves
-- its next_start in one transaction (long_task.due_crons, long_task.fire_crons).
-- planned_start is the slot (next_start) of the firing that queued a run, for both rules.
ALTER TABLE long_task.task
    ADD COLUMN shed_cron text,
    ADD COLUMN shed_timezone text,
    ADD COLUMN planned_start timestamptz,
    ADD CONSTRAINT task_one_schedule_rule CHECK (shed_cron IS NULL OR shed_period_id IS NULL);
COMMENT ON COLUMN long_task.task.shed_cron IS
    'cron expression of the schedule: five fields (minute hour day month weekday) or six (second first)';
COMMENT ON COLUMN long_task.task.shed_timezone IS
    'IANA time zone shed_cron is read in (NULL: UTC)';
COMMENT ON COLUMN long_task.task.planned_start IS
    'the planned time (next_start) of the schedule firing that queued this run';
-- submit gains p_shed_cron and p_shed_timezone (client_api/submit.sql; absent while a new
-- database is created: the schema files come after the numbered migrations)
DROP FUNCTION IF EXISTS long_task.submit(varchar[], text, jsonb, char(2), integer, integer, bigint, varchar,
                                         timestamptz, double precision, integer, timestamptz, char(3), integer,
                                         boolean, text, bigint[]);
