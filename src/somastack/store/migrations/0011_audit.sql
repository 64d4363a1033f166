-- The audit log: append-only and hash-chained. seq is gap-free (assigned under an advisory lock,
-- checked here); hash = SHA3-512(prev_hash || canonical(row)) is computed by the writer and
-- re-checked by `soma audit verify`. UPDATE, DELETE and TRUNCATE are refused by the database.
CREATE TABLE IF NOT EXISTS audit_log (
  seq          bigint PRIMARY KEY CHECK (seq > 0),
  at           timestamptz NOT NULL,
  tenant_id    text,
  actor        text NOT NULL,
  action       text NOT NULL,
  resource     text NOT NULL,
  decision     text NOT NULL CHECK (decision IN ('allow', 'deny', 'error', 'info')),
  reasons      jsonb NOT NULL DEFAULT '[]'::jsonb,
  trace_id     text,
  payload_hash text NOT NULL,
  prev_hash    text NOT NULL,
  hash         text NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS audit_log_tenant_idx ON audit_log (tenant_id, seq);
CREATE INDEX IF NOT EXISTS audit_log_action_idx ON audit_log (action, seq);

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE FUNCTION audit_log_check_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE last_seq bigint; last_hash text;
BEGIN
  SELECT seq, hash INTO last_seq, last_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
  IF NEW.seq <> coalesce(last_seq, 0) + 1 THEN
    RAISE EXCEPTION 'audit_log seq % breaks the sequence (last is %)', NEW.seq, coalesce(last_seq, 0);
  END IF;
  IF NEW.prev_hash <> coalesce(last_hash, repeat('0', 128)) THEN
    RAISE EXCEPTION 'audit_log row % does not chain to row %', NEW.seq, coalesce(last_seq, 0);
  END IF;
  RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
DROP TRIGGER IF EXISTS audit_log_chain ON audit_log;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_check_chain();
