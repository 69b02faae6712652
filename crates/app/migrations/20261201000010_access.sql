-- Access control: every user has a role (the first admin is made with `rust-app users create-admin`, never by a
-- default password), and every event published over HTTP remembers who published it (only they and admins may
-- read it back). Events from before this migration, and the service's own user_* events, have no publisher:
-- only admins read them.
ALTER TABLE users ADD COLUMN IF NOT EXISTS role TEXT NOT NULL DEFAULT 'user';
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'users_role_known') THEN
        ALTER TABLE users ADD CONSTRAINT users_role_known CHECK (role IN ('user', 'admin'));
    END IF;
END $$;

ALTER TABLE event_log ADD COLUMN IF NOT EXISTS publisher UUID;
