-- Turns are kept for settings.turn_days (agent.turns.purge_turns): the purge reads them by age
-- across tenants; their events go with them (ON DELETE CASCADE).
CREATE INDEX IF NOT EXISTS turns_created_idx ON turns (created_at);
