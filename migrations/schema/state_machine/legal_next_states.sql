-- Legal transitions (a row may always keep its state):
--   DR -> AW, CC
--   AW -> AE (claim by a node), AC (turned into CC at once: nothing runs yet), CC, DR
--   AE -> CS, CF, CC (outcome), AC (cancel request), AW (re-queue after a lost node)
--   AC -> CC (the node killed the process), CS, CF (the process ended first), AW (re-queue)
--   CS, CF, CC -> AW (re-queue), DR
CREATE OR REPLACE FUNCTION long_task.legal_next_states(from_state char(2)) RETURNS char(2)[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE from_state
        WHEN 'DR' THEN ARRAY['AW', 'CC']
        WHEN 'AW' THEN ARRAY['AE', 'AC', 'CC', 'DR']
        WHEN 'AE' THEN ARRAY['CS', 'CF', 'CC', 'AC', 'AW']
        WHEN 'AC' THEN ARRAY['CC', 'CS', 'CF', 'AW']
        WHEN 'CS' THEN ARRAY['AW', 'DR']
        WHEN 'CF' THEN ARRAY['AW', 'DR']
        WHEN 'CC' THEN ARRAY['AW', 'DR']
    END::char(2)[]
$$;
