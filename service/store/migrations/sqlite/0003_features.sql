-- Schema version 3: each prediction event keeps the seven features it was answered for (the
-- inference log: retraining data once joined with feedback). NULL when STORE_FEATURES=0, and for
-- events recorded before this version. Pruned with their rows.
ALTER TABLE predictions ADD COLUMN sex TEXT;
ALTER TABLE predictions ADD COLUMN age REAL;
ALTER TABLE predictions ADD COLUMN height REAL;
ALTER TABLE predictions ADD COLUMN weight REAL;
ALTER TABLE predictions ADD COLUMN duration REAL;
ALTER TABLE predictions ADD COLUMN heart_rate REAL;
ALTER TABLE predictions ADD COLUMN body_temp REAL;
