-- pgtaskd schema, version 16: the forced hand-over of a node's tasks (long_task.hand_over_node,
-- migrations/schema/control/hand_over_node.sql). Its runs go back through the one hand-back rule,
-- which gains a last parameter, p_lost (false: a run taken away on purpose, not lost: re-queued
-- whatever the task's lost re-runs, its attempt not charged). A new parameter is a new signature:
-- the old one is dropped here and the schema file creates the new one (a fresh database has
-- none yet when this runs).
DROP FUNCTION IF EXISTS long_task.hand_back(bigint, text, bigint, bigint[], uuid[], integer, bigint);
