-- Personas: a system prompt, an ordered provider chain, default tools and a memory namespace,
-- stored per tenant under the SHA-256 of their canonical JSON. Versions are immutable: a changed
-- document is a new row under the same name, and a name resolves to its newest version.
CREATE TABLE IF NOT EXISTS personas (
  tenant_id  text NOT NULL,
  hash       char(64) NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
  name       text NOT NULL,
  doc        jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  created_by text NOT NULL,
  PRIMARY KEY (tenant_id, hash)
);
CREATE INDEX IF NOT EXISTS personas_name_idx ON personas (tenant_id, name, created_at DESC);

SELECT soma_tenant_table('personas');
