-- Schema version 1: prediction events, feedback, meta. Times are epoch seconds (server clock).
CREATE TABLE IF NOT EXISTS predictions (
    seq           INTEGER PRIMARY KEY,   -- insertion order: the FIFO order of the join
    id            INTEGER NOT NULL,      -- client record id; repeats are separate events
    prediction    REAL    NOT NULL,
    model_version TEXT    NOT NULL,
    ts            REAL    NOT NULL,      -- server receive time
    feedback_seq  INTEGER                -- the feedback joined to this event, NULL while open
);
-- FIFO join and "does id exist": rows of one id are contiguous, in seq order (rowid ends the key).
CREATE INDEX IF NOT EXISTS predictions_by_id ON predictions (id, feedback_seq);
-- Coverage over the window reads only the index (covering).
CREATE INDEX IF NOT EXISTS predictions_by_ts ON predictions (ts, feedback_seq);

CREATE TABLE IF NOT EXISTS feedback (
    seq            INTEGER PRIMARY KEY,
    id             INTEGER NOT NULL,
    calories       REAL    NOT NULL,
    event_ts       REAL    NOT NULL,     -- when observed: the client's ts, else receipt
    received_ts    REAL    NOT NULL,     -- server receive time: what windows use
    outcome        TEXT    NOT NULL CHECK (outcome IN ('matched', 'duplicate', 'unmatched')),
    prediction_seq INTEGER,              -- matched only
    prediction     REAL,
    lag            REAL,
    sle            REAL,                 -- (ln(1+yhat) - ln(1+y))^2
    ae             REAL                  -- |yhat - y|
);
-- Rolling quality over the window reads only this partial covering index.
CREATE INDEX IF NOT EXISTS feedback_matched_by_received
    ON feedback (received_ts, sle, ae, outcome) WHERE outcome = 'matched';
CREATE INDEX IF NOT EXISTS feedback_by_received ON feedback (received_ts);

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
