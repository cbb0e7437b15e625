-- Schema version 5: challengers. Each challenger's prediction of an event is stored beside the
-- champion's, in the same transaction, but it is not an event: the FIFO join, coverage and the
-- export read `predictions` only. When the event's label joins, its challenger rows get their own
-- error and the champion's on the same label, so paired quality reads this table alone.
CREATE TABLE IF NOT EXISTS shadow_predictions (
    prediction_seq   INTEGER NOT NULL,  -- the champion's event (predictions.seq)
    model_version    TEXT    NOT NULL,  -- the challenger's
    prediction       REAL    NOT NULL,
    received_ts      REAL,              -- the joined feedback's receive time; NULL while open
    champion_version TEXT,              -- the version that answered the event
    sle              REAL,              -- the challenger's (ln(1+yhat) - ln(1+y))^2
    champion_sle     REAL,              -- the champion's, on the same label
    ae               REAL,              -- the challenger's |yhat - y|
    PRIMARY KEY (prediction_seq, model_version)
) WITHOUT ROWID;
-- Paired quality over a window or since a probation began reads only this partial covering index.
CREATE INDEX IF NOT EXISTS shadow_joined_by_received
    ON shadow_predictions (received_ts, model_version, champion_version, sle, champion_sle, ae)
    WHERE received_ts IS NOT NULL;

-- Each challenger's comparison with each champion since its first pair, kept as running sums
-- updated in the join's transaction: a verdict reads a few rows, never every pair, and pruning old
-- pairs never changes it. Sharded by the event's id so that instances sharing a database do not all
-- wait on one row's lock.
CREATE TABLE IF NOT EXISTS paired_totals (
    challenger_version TEXT    NOT NULL,
    champion_version   TEXT    NOT NULL,
    shard              INTEGER NOT NULL,
    pairs              INTEGER NOT NULL,
    sle                REAL    NOT NULL,  -- the challenger's sum of squared log errors
    champion_sle       REAL    NOT NULL,  -- the champion's, on the same labels
    squares            REAL    NOT NULL,  -- sum of (sle - champion_sle)^2
    ae                 REAL    NOT NULL,  -- the challenger's sum of absolute errors
    first_received     REAL    NOT NULL,  -- when the first pair joined
    PRIMARY KEY (challenger_version, champion_version, shard)
) WITHOUT ROWID;

-- Promotions and what became of them: the guard's probation lives here, not in a process, so it
-- survives restarts and two guards see the same one. A rollback or a confirmation `closes` its
-- promotion, once (UNIQUE): of two guards deciding at once, one records the decision.
CREATE TABLE IF NOT EXISTS model_changes (
    seq              INTEGER PRIMARY KEY,
    ts               REAL    NOT NULL,  -- the store's clock
    kind             TEXT    NOT NULL CHECK (kind IN ('promotion', 'rollback', 'confirmed')),
    model_name       TEXT    NOT NULL,  -- the registered model
    champion_number  TEXT    NOT NULL,  -- the registry version @champion names after this change
    champion_version TEXT    NOT NULL,  -- its trained version (what the store's rows carry)
    previous_number  TEXT    NOT NULL,  -- the version it replaced
    previous_version TEXT    NOT NULL,
    reason           TEXT    NOT NULL,  -- promotion: better or forced; rollback: worse
    probation_until  REAL,              -- promotions: when the probation ends
    closes           INTEGER UNIQUE     -- rollbacks and confirmations: the promotion they end
);
