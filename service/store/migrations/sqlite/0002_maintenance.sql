-- Schema version 2: a lease per maintenance task, so one process at a time prunes old rows.
CREATE TABLE IF NOT EXISTS maintenance (
    task        TEXT PRIMARY KEY,
    holder      INTEGER,              -- pid holding the lease
    lease_until REAL NOT NULL DEFAULT 0,
    last_run    REAL,
    rows_pruned INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO maintenance (task) VALUES ('prune');
