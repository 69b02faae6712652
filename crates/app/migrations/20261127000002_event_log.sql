-- Events the service consumed from its topic, once each: a redelivered record (at-least-once consumption)
-- finds its id already here and changes nothing.
CREATE TABLE IF NOT EXISTS event_log (
    id          UUID PRIMARY KEY,
    type        TEXT NOT NULL,
    key         TEXT NOT NULL,
    data        JSONB NOT NULL,
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    "offset"    BIGINT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS event_log_key ON event_log (key);
