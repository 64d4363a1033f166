-- Tool broker state: idempotency records (`idem:{tool}:{key}`, kept 24 h, so a retried call
-- returns the first result) and per-minute call counters for tool rate limits.
CREATE TABLE IF NOT EXISTS tool_idempotency (
  tenant_id  text NOT NULL,
  key        text NOT NULL,
  tool       text NOT NULL,
  args_hash  text NOT NULL,
  status     text NOT NULL CHECK (status IN ('running', 'done')),
  result     jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, key)
);
CREATE INDEX IF NOT EXISTS tool_idempotency_expires_idx ON tool_idempotency (expires_at);

CREATE TABLE IF NOT EXISTS tool_rate_windows (
  tenant_id    text NOT NULL,
  tool         text NOT NULL,
  window_start timestamptz NOT NULL,
  calls        integer NOT NULL,
  PRIMARY KEY (tenant_id, tool, window_start)
);

SELECT soma_tenant_table('tool_idempotency'), soma_tenant_table('tool_rate_windows');
