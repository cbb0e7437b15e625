-- Schema version 7: quality before the labels. Each champion prediction keeps what was served beside
-- it: the loss estimator's raw expected squared log error, the recalibrated estimate, and the
-- interval's ends in kcal (NULL for an artifact without a loss estimator, and for challengers).
ALTER TABLE predictions ADD COLUMN loss_estimate REAL;
ALTER TABLE predictions ADD COLUMN estimate REAL;
ALTER TABLE predictions ADD COLUMN interval_lo REAL;
ALTER TABLE predictions ADD COLUMN interval_hi REAL;

-- Each version's online calibration: running sums over its joined labels that had an estimate and
-- an interval, updated in the join's transaction (so exact across workers and instances), never
-- pruned. The served interval's quantile and the estimate's recalibration factor are functions of
-- these sums alone. Sharded like paired_totals so that instances sharing a database do not all wait
-- on one row's lock.
CREATE TABLE IF NOT EXISTS quality_calibration (
    model_version TEXT    NOT NULL,  -- the champion version that answered the events
    shard         INTEGER NOT NULL,
    labels        INTEGER NOT NULL,  -- joined labels
    outside       INTEGER NOT NULL,  -- of those, outside the served interval
    loss_estimate REAL    NOT NULL,  -- sum of the raw estimates
    estimate      REAL    NOT NULL,  -- sum of the served (recalibrated) estimates
    realized      REAL    NOT NULL,  -- sum of the realized squared log errors
    PRIMARY KEY (model_version, shard)
) WITHOUT ROWID;
