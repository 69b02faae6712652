-- Poison events: an event Kafka rejects for its own sake (too large, malformed) is parked after
-- OUTBOX_MAX_ATTEMPTS failed sends — kept with its last error, no longer sent, counted in `outbox_parked_events`
-- — so the events of its key after it are published again. Un-parking (docs/infra.md) clears `parked_at`.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS parked_at TIMESTAMPTZ;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS last_error TEXT;

-- Parked rows are few: found by this index, not by a scan of the pending ones.
CREATE INDEX IF NOT EXISTS outbox_parked ON outbox (seq) WHERE parked_at IS NOT NULL AND sent_at IS NULL;
