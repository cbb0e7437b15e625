-- Schema version 7: quality before the labels. Each champion prediction keeps what was served beside
-- it: the loss estimator's raw expected squared log error, the recalibrated estimate, and the
-- interval's ends in kcal (NULL for an artifact without a loss estimator, and for challengers).
ALTER TABLE predictions
    ADD COLUMN loss_estimate double precision,
    ADD COLUMN estimate      double precision,
    ADD COLUMN interval_lo   double precision,
    ADD COLUMN interval_hi   double precision;

-- Each version's online calibration: running sums over its joined labels that had an estimate and
-- an interval, updated in the join's transaction (so exact across workers and instances), never
-- pruned. The served interval's quantile and the estimate's recalibration factor are functions of
-- these sums alone. Sharded like paired_totals so that instances sharing a database do not all wait
-- on one row's lock.
CREATE TABLE quality_calibration (
    model_version text             NOT NULL,
    shard         integer          NOT NULL,
    labels        bigint           NOT NULL,
    outside       bigint           NOT NULL,
    loss_estimate double precision NOT NULL,
    estimate      double precision NOT NULL,
    realized      double precision NOT NULL,
    PRIMARY KEY (model_version, shard)
);
