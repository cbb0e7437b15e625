-- A PostgreSQL feedback store at schema version 1 (service/store/migrations/postgresql/0001 as first
-- shipped), holding the same rows as store_v1.sql. Frozen: never regenerate from newer code.
CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE predictions (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            bigint           NOT NULL,
    prediction    double precision NOT NULL,
    model_version text             NOT NULL,
    ts            double precision NOT NULL,
    feedback_seq  bigint
);
CREATE INDEX predictions_by_id ON predictions (id, feedback_seq NULLS FIRST, seq);
CREATE INDEX predictions_by_ts ON predictions (ts) INCLUDE (feedback_seq);
CREATE TABLE feedback (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             bigint           NOT NULL,
    calories       double precision NOT NULL,
    event_ts       double precision NOT NULL,
    received_ts    double precision NOT NULL,
    outcome        text             NOT NULL CHECK (outcome IN ('matched', 'duplicate', 'unmatched')),
    prediction_seq bigint,
    prediction     double precision,
    lag            double precision,
    sle            double precision,
    ae             double precision
);
CREATE INDEX feedback_matched_by_received ON feedback (received_ts) INCLUDE (sle, ae)
    WHERE outcome = 'matched';
CREATE INDEX feedback_by_received ON feedback (received_ts);
CREATE TABLE meta (key text PRIMARY KEY, value text);
INSERT INTO predictions (id, prediction, model_version, ts, feedback_seq) VALUES
    (1, 100.0, 'calories-xgb-v1', 1800000000.0, 1),
    (2, 50.0, 'calories-xgb-v1', 1800000001.0, 2),
    (2, 60.0, 'calories-xgb-v1', 1800000002.0, NULL),
    (3, 10.0, 'calories-xgb-v1', 1800000003.0, NULL);
INSERT INTO feedback (id, calories, event_ts, received_ts, outcome, prediction_seq, prediction, lag, sle, ae) VALUES
    (1, 90.0, 1800000010.0, 1800000010.0, 'matched', 1, 100.0, 10.0, 1.08703582738667141327e-02, 10.0),
    (2, 50.0, 1800000011.0, 1800000011.0, 'matched', 2, 50.0, 10.0, 0.0, 0.0),
    (9, 5.0, 1800000012.0, 1800000012.0, 'unmatched', NULL, NULL, NULL, NULL, NULL);
