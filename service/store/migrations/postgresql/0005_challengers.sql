-- Schema version 5: challengers. Each challenger's prediction of an event is stored beside the
-- champion's, in the same transaction, but it is not an event: the FIFO join, coverage and the
-- export read `predictions` only. When the event's label joins, its challenger rows get their own
-- error and the champion's on the same label, so paired quality reads this table alone.
CREATE TABLE shadow_predictions (
    prediction_seq   bigint           NOT NULL,  -- the champion's event (predictions.seq)
    model_version    text             NOT NULL,  -- the challenger's
    prediction       double precision NOT NULL,
    received_ts      double precision,           -- the joined feedback's receive time; NULL while open
    champion_version text,                       -- the version that answered the event
    sle              double precision,           -- the challenger's (ln(1+yhat) - ln(1+y))^2
    champion_sle     double precision,           -- the champion's, on the same label
    ae               double precision,           -- the challenger's |yhat - y|
    PRIMARY KEY (prediction_seq, model_version)
);
-- Paired quality over a window or since a probation began reads only this partial covering index.
CREATE INDEX shadow_joined_by_received ON shadow_predictions (received_ts)
    INCLUDE (model_version, champion_version, sle, champion_sle, ae) WHERE received_ts IS NOT NULL;

-- Each challenger's comparison with each champion since its first pair, kept as running sums
-- updated in the join's transaction: a verdict reads a few rows, never every pair, and pruning old
-- pairs never changes it. Sharded by the event's id so that instances sharing a database do not all
-- wait on one row's lock.
CREATE TABLE paired_totals (
    challenger_version text             NOT NULL,
    champion_version   text             NOT NULL,
    shard              integer          NOT NULL,
    pairs              bigint           NOT NULL,
    sle                double precision NOT NULL,  -- the challenger's sum of squared log errors
    champion_sle       double precision NOT NULL,  -- the champion's, on the same labels
    squares            double precision NOT NULL,  -- sum of (sle - champion_sle)^2
    ae                 double precision NOT NULL,  -- the challenger's sum of absolute errors
    first_received     double precision NOT NULL,  -- when the first pair joined
    PRIMARY KEY (challenger_version, champion_version, shard)
);

-- Promotions and what became of them: the guard's probation lives here, not in a process, so it
-- survives restarts and two guards see the same one. A rollback or a confirmation `closes` its
-- promotion, once (UNIQUE): of two guards deciding at once, one records the decision.
CREATE TABLE model_changes (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts               double precision NOT NULL,
    kind             text             NOT NULL CHECK (kind IN ('promotion', 'rollback', 'confirmed')),
    model_name       text             NOT NULL,
    champion_number  text             NOT NULL,
    champion_version text             NOT NULL,
    previous_number  text             NOT NULL,
    previous_version text             NOT NULL,
    reason           text             NOT NULL,
    probation_until  double precision,
    closes           bigint UNIQUE
);
