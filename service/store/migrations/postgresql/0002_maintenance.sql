-- Schema version 2: a row per maintenance task. In PostgreSQL the lease itself is an advisory lock
-- (pids collide across hosts and containers); the row records who ran it last and what it did.
CREATE TABLE maintenance (
    task        text PRIMARY KEY,
    holder      text,                     -- host:pid of the last holder, for people reading it
    lease_until double precision NOT NULL DEFAULT 0,
    last_run    double precision,
    rows_pruned bigint NOT NULL DEFAULT 0
);
INSERT INTO maintenance (task) VALUES ('prune') ON CONFLICT DO NOTHING;
