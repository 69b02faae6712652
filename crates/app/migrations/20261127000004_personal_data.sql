-- Personal data: user events and the audit trail carry ids and the names of changed fields only. Events written
-- before carried the user's name and email (`data.user`); this brings the stored copies in line, and adds what
-- deletion scrubbing and the event log's retention need. docs/security.md, "Personal data", has the policy.

-- What a user event's data may keep: the user's id and the names of changed fields. Anything else (an older
-- event's `data.user` with name and email, whatever a client put in an event of the users' namespace) goes.
-- Also the shape of a trail entry's details, which never hold a user_id: the same function serves both.
CREATE OR REPLACE FUNCTION user_event_ids_only(data jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object('user_id', data -> 'user_id', 'changed', data -> 'changed'))
$$;

UPDATE outbox SET payload = jsonb_set(payload, '{data}', user_event_ids_only(payload -> 'data'))
WHERE event_type LIKE 'user\_%' AND payload -> 'data' IS DISTINCT FROM user_event_ids_only(payload -> 'data');

UPDATE event_log SET data = user_event_ids_only(data)
WHERE type LIKE 'user\_%' AND data IS DISTINCT FROM user_event_ids_only(data);

UPDATE user_activity SET details = user_event_ids_only(details)
WHERE details IS DISTINCT FROM user_event_ids_only(details);

-- Outbox rows still carrying a profile: only those an instance of the previous version writes during a rolling
-- deploy. Deleting a user scrubs them through this (nearly always empty) index instead of scanning the outbox.
CREATE INDEX IF NOT EXISTS outbox_personal_data ON outbox (key) WHERE payload -> 'data' ? 'user';

-- The event log's retention prunes by the time an event was recorded.
CREATE INDEX IF NOT EXISTS event_log_recorded_at ON event_log (recorded_at);
