-- Fleet health: what each POS agent reported in its last heartbeat, overwritten in place (one
-- UPDATE per beat, no history). The backlog is the agent's offline taps not yet accepted by the
-- gateway; its oldest approval time is computed here from the age the agent sends, so a wrong
-- clock at the counter does not move it.
ALTER TABLE devices
    ADD COLUMN agent_version             text,
    ADD COLUMN last_seen_at              timestamptz,
    ADD COLUMN offline_backlog_count     integer CHECK (offline_backlog_count >= 0),
    ADD COLUMN offline_backlog_oldest_at timestamptz;
