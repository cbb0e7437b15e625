-- Schema version 4: quality per model version. A matched feedback keeps the model version of the
-- prediction event it joined; model_versions records when each version was first seen (its first
-- recorded prediction, database server time), which says which version came before which.
ALTER TABLE feedback ADD COLUMN model_version text;
UPDATE feedback f SET model_version = p.model_version
    FROM predictions p WHERE p.seq = f.prediction_seq AND f.outcome = 'matched';
-- The window reads group by version: the covering indexes carry it (replacing, not adding, so a
-- write maintains as many indexes as before).
DROP INDEX IF EXISTS feedback_matched_by_received;
CREATE INDEX feedback_matched_by_received ON feedback (received_ts) INCLUDE (model_version, sle, ae)
    WHERE outcome = 'matched';
DROP INDEX IF EXISTS predictions_by_ts;
CREATE INDEX predictions_by_ts ON predictions (ts) INCLUDE (model_version, feedback_seq);

CREATE TABLE model_versions (
    model_version text PRIMARY KEY,
    first_seen    double precision NOT NULL
);
INSERT INTO model_versions (model_version, first_seen)
    SELECT model_version, min(ts) FROM predictions GROUP BY model_version;
