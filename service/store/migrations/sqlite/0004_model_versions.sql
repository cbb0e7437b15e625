-- Schema version 4: quality per model version. A matched feedback keeps the model version of the
-- prediction event it joined; model_versions records when each version was first seen (its first
-- recorded prediction), which says which version came before which.
ALTER TABLE feedback ADD COLUMN model_version TEXT;
UPDATE feedback SET model_version = (SELECT p.model_version FROM predictions p WHERE p.seq = feedback.prediction_seq)
    WHERE outcome = 'matched';
-- The window reads group by version: the covering indexes carry it (replacing, not adding, so a
-- write maintains as many indexes as before).
DROP INDEX IF EXISTS feedback_matched_by_received;
CREATE INDEX IF NOT EXISTS feedback_matched_by_received
    ON feedback (received_ts, model_version, sle, ae, outcome) WHERE outcome = 'matched';
DROP INDEX IF EXISTS predictions_by_ts;
CREATE INDEX IF NOT EXISTS predictions_by_ts ON predictions (ts, model_version, feedback_seq);

CREATE TABLE IF NOT EXISTS model_versions (
    model_version TEXT PRIMARY KEY,
    first_seen    REAL NOT NULL          -- server time of the version's first recorded prediction
);
INSERT OR IGNORE INTO model_versions (model_version, first_seen)
    SELECT model_version, min(ts) FROM predictions GROUP BY model_version;
