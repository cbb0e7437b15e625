-- Schema version 3: each prediction event keeps the seven features it was answered for (the
-- inference log: retraining data once joined with feedback). NULL when STORE_FEATURES=0, and for
-- events recorded before this version. Pruned with their rows.
ALTER TABLE predictions
    ADD COLUMN sex        text,
    ADD COLUMN age        double precision,
    ADD COLUMN height     double precision,
    ADD COLUMN weight     double precision,
    ADD COLUMN duration   double precision,
    ADD COLUMN heart_rate double precision,
    ADD COLUMN body_temp  double precision;
