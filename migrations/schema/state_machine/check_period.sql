-- Raises the error for a schedule period code with no row in long_task.period.
CREATE OR REPLACE FUNCTION long_task.check_period(p_period char(3)) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM long_task.period p WHERE p.id = p_period) THEN
        RAISE EXCEPTION 'unknown schedule period %', quote_nullable(p_period)
            USING ERRCODE = 'check_violation', HINT = 'known periods: SEC, MIN, HOU, DAY, WEE, MON';
    END IF;
END
$$;
