-- Tenants and their API keys (stored as SHA3-256 of the secret), plus one-time bootstrap state.
-- These are platform tables: the application role soma_app has no rights on them; the server reads
-- them with the owner's rights and always filters by the tenant the credential belongs to.
CREATE TABLE IF NOT EXISTS tenants (
  id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
  name            text NOT NULL,
  plan            text NOT NULL DEFAULT 'free',
  limits          jsonb NOT NULL DEFAULT '{}'::jsonb,
  billing_profile jsonb NOT NULL DEFAULT '{}'::jsonb,
  residency       text,
  disabled_at     timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS api_keys (
  id           text PRIMARY KEY,
  tenant_id    text NOT NULL REFERENCES tenants (id),
  name         text NOT NULL,
  secret_hash  text NOT NULL,
  scopes       text[] NOT NULL,
  created_by   text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at   timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_tenant_idx ON api_keys (tenant_id, created_at);

CREATE TABLE IF NOT EXISTS governance_state (
  name       text PRIMARY KEY,
  value      jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
