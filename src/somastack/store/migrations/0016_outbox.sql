-- Transactional outbox: events written in the same transaction as the change they describe, then
-- relayed to NATS JetStream (at least once; consumers dedupe by event id).
CREATE TABLE IF NOT EXISTS outbox (
  seq             bigserial PRIMARY KEY,
  id              uuid NOT NULL UNIQUE,
  tenant_id       text,
  topic           text NOT NULL,
  type            text NOT NULL,
  payload         jsonb NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  published_at    timestamptz,
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_error      text,
  dead_at         timestamptz,
  replays         integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_pending_idx ON outbox (next_attempt_at, seq)
  WHERE published_at IS NULL AND dead_at IS NULL;
GRANT INSERT ON outbox TO soma_app;
GRANT USAGE ON SEQUENCE outbox_seq_seq TO soma_app;

-- Event ids a consumer has processed, written in the consumer's own transaction (idempotence).
CREATE TABLE IF NOT EXISTS consumed_events (
  consumer     text NOT NULL,
  event_id     uuid NOT NULL,
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, event_id)
);

ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_insert ON outbox;
CREATE POLICY tenant_insert ON outbox FOR INSERT TO soma_app
  WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
