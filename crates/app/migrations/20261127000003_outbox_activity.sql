-- Transactional outbox: every user write inserts its event here in the same transaction, so an event exists
-- exactly when the write committed. The relay publishes pending rows in `seq` order and stamps `sent_at`;
-- sent rows are pruned after a retention period.
CREATE TABLE IF NOT EXISTS outbox (
    seq          BIGSERIAL PRIMARY KEY,
    id           UUID NOT NULL UNIQUE,
    event_type   TEXT NOT NULL,
    key          TEXT NOT NULL,
    payload      JSONB NOT NULL,
    traceparent  TEXT,
    tracestate   TEXT,
    occurred_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at      TIMESTAMPTZ,
    attempts     INTEGER NOT NULL DEFAULT 0
);

-- The relay's work list: pending rows in order. Partial, so it stays small however many sent rows wait for
-- pruning.
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- The audit trail of each user, maintained by the consumer from the user events.
CREATE TABLE IF NOT EXISTS user_activity (
    event_id     UUID PRIMARY KEY,
    user_id      UUID NOT NULL,
    event_type   TEXT NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    details      JSONB NOT NULL DEFAULT '{}'::jsonb,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS user_activity_user ON user_activity (user_id, occurred_at, event_id);

-- Events whose effect the consumer has applied, written in the same transaction as the effect: a redelivered
-- event finds its id here and is skipped.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     UUID NOT NULL,
    consumer     TEXT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- When a logged event happened (rows recorded before this column existed fall back to recorded_at).
ALTER TABLE event_log ADD COLUMN IF NOT EXISTS occurred_at TIMESTAMPTZ;
