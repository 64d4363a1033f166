-- Agent turns and their event streams. A turn is one input → answer run of a session; its
-- events (recall, plan, tool.*, verify, answer, remember, usage, error) are stored in order so
-- GET /v1/turns/{id} replays them and a client reconnecting with Last-Event-ID resumes.
CREATE TABLE IF NOT EXISTS turns (
  tenant_id       text NOT NULL,
  id              text NOT NULL,
  session_id      text NOT NULL,
  persona_hash    text NOT NULL,
  idempotency_key text,
  request_hash    text NOT NULL,
  status          text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'done', 'error', 'cancelled')),
  inputs          jsonb NOT NULL,
  answer          text,
  error           jsonb,
  trace_id        text NOT NULL,
  usage           jsonb,
  fallbacks       jsonb NOT NULL DEFAULT '[]',
  created_at      timestamptz NOT NULL DEFAULT now(),
  finished_at     timestamptz,
  PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS turns_idempotency_idx
  ON turns (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS turns_session_idx ON turns (tenant_id, session_id, created_at);

CREATE TABLE IF NOT EXISTS turn_events (
  tenant_id  text NOT NULL,
  turn_id    text NOT NULL,
  seq        integer NOT NULL,
  type       text NOT NULL,
  data       jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, turn_id, seq),
  FOREIGN KEY (tenant_id, turn_id) REFERENCES turns (tenant_id, id) ON DELETE CASCADE
);

SELECT soma_tenant_table('turns'), soma_tenant_table('turn_events');
