-- A feedback store as schema version 1 (commit c427fdd) wrote it: 4 prediction events
-- (id 2 twice), 2 matched feedback, 1 unmatched. Frozen: never regenerate from newer code.
PRAGMA user_version = 1;
BEGIN TRANSACTION;
CREATE TABLE feedback (
    seq            INTEGER PRIMARY KEY,
    id             INTEGER NOT NULL,
    calories       REAL    NOT NULL,
    event_ts       REAL    NOT NULL,     
    received_ts    REAL    NOT NULL,     
    outcome        TEXT    NOT NULL CHECK (outcome IN ('matched', 'duplicate', 'unmatched')),
    prediction_seq INTEGER,              
    prediction     REAL,
    lag            REAL,
    sle            REAL,                 
    ae             REAL                  
);
INSERT INTO "feedback" VALUES(1,1,90.0,1800000010.0,1800000010.0,'matched',1,100.0,10.0,1.08703582738667141327e-02,10.0);
INSERT INTO "feedback" VALUES(2,2,50.0,1800000011.0,1800000011.0,'matched',2,50.0,10.0,0.0,0.0);
INSERT INTO "feedback" VALUES(3,9,5.0,1800000012.0,1800000012.0,'unmatched',NULL,NULL,NULL,NULL,NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE predictions (
    seq           INTEGER PRIMARY KEY,   
    id            INTEGER NOT NULL,      
    prediction    REAL    NOT NULL,
    model_version TEXT    NOT NULL,
    ts            REAL    NOT NULL,      
    feedback_seq  INTEGER                
);
INSERT INTO "predictions" VALUES(1,1,100.0,'calories-xgb-v1',1800000000.0,1);
INSERT INTO "predictions" VALUES(2,2,50.0,'calories-xgb-v1',1800000001.0,2);
INSERT INTO "predictions" VALUES(3,2,60.0,'calories-xgb-v1',1800000002.0,NULL);
INSERT INTO "predictions" VALUES(4,3,10.0,'calories-xgb-v1',1800000003.0,NULL);
CREATE INDEX predictions_by_id ON predictions (id, feedback_seq);
CREATE INDEX predictions_by_ts ON predictions (ts, feedback_seq);
CREATE INDEX feedback_matched_by_received
    ON feedback (received_ts, sle, ae, outcome) WHERE outcome = 'matched';
CREATE INDEX feedback_by_received ON feedback (received_ts);
COMMIT;
