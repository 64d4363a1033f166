-- Recall traces are kept for settings.brain_trace_days (brain.feedback.purge_traces): the purge
-- reads them by age across tenants.
CREATE INDEX IF NOT EXISTS brain_traces_created_idx ON brain_traces (created_at);
