-- Schema version 1: prediction events, feedback, meta. Times are epoch seconds from the database
-- server's clock (double precision, as SQLite's REAL), so instances with skewed clocks agree.
CREATE TABLE predictions (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- the FIFO order of the join
    id            bigint           NOT NULL,  -- client record id; repeats are separate events
    prediction    double precision NOT NULL,
    model_version text             NOT NULL,
    ts            double precision NOT NULL,  -- server receive time
    feedback_seq  bigint                      -- the feedback joined to this event, NULL while open
);
-- FIFO join and "does the id exist": the events of an id, open ones first, each group in seq order.
CREATE INDEX predictions_by_id ON predictions (id, feedback_seq NULLS FIRST, seq);
-- Coverage over the window reads only the index (covering).
CREATE INDEX predictions_by_ts ON predictions (ts) INCLUDE (feedback_seq);

CREATE TABLE feedback (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             bigint           NOT NULL,
    calories       double precision NOT NULL,
    event_ts       double precision NOT NULL,  -- when observed: the client's ts, else receipt
    received_ts    double precision NOT NULL,  -- server receive time: what windows use
    outcome        text             NOT NULL CHECK (outcome IN ('matched', 'duplicate', 'unmatched')),
    prediction_seq bigint,                     -- matched only
    prediction     double precision,
    lag            double precision,
    sle            double precision,           -- (ln(1+yhat) - ln(1+y))^2
    ae             double precision            -- |yhat - y|
);
-- Rolling quality over the window reads only this partial covering index.
CREATE INDEX feedback_matched_by_received ON feedback (received_ts) INCLUDE (sle, ae)
    WHERE outcome = 'matched';
CREATE INDEX feedback_by_received ON feedback (received_ts);

CREATE TABLE meta (key text PRIMARY KEY, value text);
