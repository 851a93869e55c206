-- Raises the error for a cron schedule the database can tell is wrong: both schedule rules on one
-- row, an expression that is not five or six fields (or an @nickname) of cron characters, a time
-- zone PostgreSQL does not know (pg_timezone_names: IANA names). The full parse of an expression
-- (ranges, names, L, #, W) is the Scheduler's (src/cron.rs): a row it refuses gets a
-- `schedule_refused` event and its next_start cleared (long_task.fire_crons).
CREATE OR REPLACE FUNCTION long_task.check_cron(p_cron text, p_timezone text, p_period char(3))
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_known text;
BEGIN
    IF p_cron IS NOT NULL AND p_period IS NOT NULL THEN
        RAISE EXCEPTION 'a task schedules with a period (shed_period_id) or a cron expression (shed_cron), not both'
            USING ERRCODE = 'check_violation';
    END IF;
    IF p_cron IS NOT NULL
       AND btrim(p_cron) !~ '^@[A-Za-z]+$'
       AND btrim(p_cron) !~ '^[0-9A-Za-z*/,#?-]+([[:space:]]+[0-9A-Za-z*/,#?-]+){4,5}$' THEN
        RAISE EXCEPTION 'malformed cron expression %', quote_literal(p_cron)
            USING ERRCODE = 'check_violation',
                  HINT = 'five fields (minute hour day-of-month month day-of-week) or six (second first), e.g. ''*/5 * * * *''';
    END IF;
    IF p_timezone IS NULL THEN
        RETURN;
    END IF;
    -- pg_timezone_names reads every zone (~60 ms): a name found there is remembered for the
    -- session (a space-separated list in a custom setting, at most ~2,000 characters), so a bulk
    -- insert pays for it once per zone. A session that writes the setting itself only fools its
    -- own rows: the Scheduler refuses a zone it does not know like a bad expression.
    v_known := coalesce(current_setting('long_task.known_timezones', true), '');
    IF p_timezone !~ '[[:space:]]' AND position(' ' || p_timezone || ' ' IN v_known) > 0 THEN
        RETURN;
    END IF;
    IF p_timezone ~ '[[:space:]]'
       OR NOT EXISTS (SELECT 1 FROM pg_timezone_names z WHERE z.name = p_timezone) THEN
        RAISE EXCEPTION 'unknown time zone %', quote_literal(p_timezone)
            USING ERRCODE = 'check_violation',
                  HINT = 'an IANA name from pg_timezone_names, e.g. ''Europe/Berlin''; NULL is UTC';
    END IF;
    IF length(v_known) > 2000 OR v_known = '' THEN
        v_known := ' ';
    END IF;
    PERFORM set_config('long_task.known_timezones', v_known || p_timezone || ' ', false);
END
$$;
