-- Ed25519 keys that sign session tokens (JWT, EdDSA), and every minted token by jti.
CREATE TABLE IF NOT EXISTS signing_keys (
  kid         text PRIMARY KEY,
  private_pem text NOT NULL,
  public_raw  text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  retired_at  timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS signing_keys_one_active ON signing_keys ((true)) WHERE retired_at IS NULL;

CREATE TABLE IF NOT EXISTS session_tokens (
  jti        text PRIMARY KEY,
  tenant_id  text NOT NULL REFERENCES tenants (id),
  kid        text NOT NULL REFERENCES signing_keys (kid),
  minted_by  text NOT NULL,
  claims     jsonb NOT NULL,
  expires_at timestamptz NOT NULL,
  revoked_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS session_tokens_tenant_idx ON session_tokens (tenant_id, created_at);
