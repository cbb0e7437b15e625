-- Schema version 6: quality by segment. Each model version's reference error per segment is taken
-- from its first N joined labels in that segment (SEGMENT_REFERENCE_PAIRS), added in the join's
-- transaction until the row holds N; never pruned (a few rows per version), so the reference
-- outlives the rows it came from.
CREATE TABLE IF NOT EXISTS segment_reference (
    model_version  TEXT    NOT NULL,  -- the champion version that answered the events
    segment        TEXT    NOT NULL,  -- a configured segment's name (service/segments.py)
    pairs          INTEGER NOT NULL,  -- labels in the reference so far (at most N)
    sle            REAL    NOT NULL,  -- their sum of squared log errors
    first_received REAL    NOT NULL,  -- when the first joined
    PRIMARY KEY (model_version, segment)
) WITHOUT ROWID;
