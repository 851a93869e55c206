-- The first planned time after `after`, anchored on `planned` (no drift; a late firing skips the
-- missed slots instead of bursting). Months follow the calendar.
CREATE OR REPLACE FUNCTION long_task.next_planned(planned timestamptz, period char(3), period_count integer, after timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    step interval;
    n bigint;
    t timestamptz;
BEGIN
    IF period IS NULL OR period_count IS NULL OR period_count < 1 THEN
        RETURN NULL;
    END IF;
    IF period = 'MON' THEN
        -- Calendar months, always counted from the anchor (Jan 31 + 2 months is Mar 31, not Mar 28).
        IF planned > after THEN
            RETURN planned;
        END IF;
        n := greatest(1, (extract(year FROM age(after, planned)) * 12 + extract(month FROM age(after, planned)))::bigint
                         / period_count);
        t := planned + make_interval(months => (n * period_count)::integer);
        WHILE t <= after LOOP
            n := n + 1;
            t := planned + make_interval(months => (n * period_count)::integer);
        END LOOP;
        RETURN t;
    END IF;
    SELECT p.step * period_count INTO step FROM long_task.period p WHERE p.id = period;
    IF planned > after THEN
        RETURN planned;
    END IF;
    n := floor(extract(epoch FROM after - planned) / extract(epoch FROM step))::bigint + 1;
    t := planned + step * n;
    WHILE t <= after LOOP
        t := t + step;
    END LOOP;
    RETURN t;
END
$$;
