-- Memories, links and forget receipts; every row is owned by a tenant, and row-level security
-- (for the application role soma_app) is the second wall behind the tenant filter in every query.
CREATE EXTENSION IF NOT EXISTS vector;

DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'soma_app') THEN
    CREATE ROLE soma_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
  END IF;
END $$;
DO $$ BEGIN
  EXECUTE format('GRANT soma_app TO %I', current_user);
EXCEPTION WHEN others THEN NULL;  -- already a member, or the owner is the role itself
END $$;

-- Every tenant-owned table: row-level security for the application role, keyed on the
-- transaction's bound tenant (app.tenant_id), and the role's DML grants. Later migrations call it.
CREATE OR REPLACE FUNCTION soma_tenant_table(t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
  EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %I', t);
  EXECUTE format(
    'CREATE POLICY tenant_isolation ON %I TO soma_app
       USING (tenant_id = current_setting(''app.tenant_id'', true))
       WITH CHECK (tenant_id = current_setting(''app.tenant_id'', true))', t);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO soma_app', t);
END $$;

CREATE TABLE IF NOT EXISTS memories (
  id           uuid PRIMARY KEY,
  tenant_id    text NOT NULL,
  namespace    text NOT NULL,
  key          text,
  content      text NOT NULL,
  kind         text NOT NULL CHECK (kind IN ('episodic', 'semantic', 'procedural')),
  metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
  tags         text[] NOT NULL DEFAULT '{}',
  importance   real NOT NULL DEFAULT 0.5 CHECK (importance >= 0 AND importance <= 1),
  event_time   timestamptz,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz,
  source       text,
  trace_id     text,
  content_hash text NOT NULL,
  embedder     text NOT NULL,
  embedding    vector NOT NULL,
  tsv          tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED
);

CREATE UNIQUE INDEX IF NOT EXISTS memories_key_uq
  ON memories (tenant_id, namespace, key) WHERE key IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS memories_hash_uq
  ON memories (tenant_id, namespace, content_hash);
CREATE INDEX IF NOT EXISTS memories_list_idx ON memories (tenant_id, namespace, created_at, id);
CREATE INDEX IF NOT EXISTS memories_tenant_list_idx ON memories (tenant_id, created_at, id);
CREATE INDEX IF NOT EXISTS memories_tsv_idx ON memories USING gin (tsv);
CREATE INDEX IF NOT EXISTS memories_expires_idx ON memories (expires_at) WHERE expires_at IS NOT NULL;
-- ANN index for the default 384-dimension embedder; queries use the same cast and predicate.
CREATE INDEX IF NOT EXISTS memories_embedding_384_idx
  ON memories USING hnsw ((embedding::vector(384)) vector_cosine_ops)
  WHERE vector_dims(embedding) = 384;

CREATE TABLE IF NOT EXISTS memory_links (
  tenant_id  text NOT NULL,
  src        uuid NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
  dst        uuid NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
  rel        text NOT NULL,
  weight     real NOT NULL DEFAULT 1.0,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, src, dst, rel)
);
CREATE INDEX IF NOT EXISTS memory_links_dst_idx ON memory_links (tenant_id, dst);

CREATE TABLE IF NOT EXISTS forget_receipts (
  id         uuid PRIMARY KEY,
  tenant_id  text NOT NULL,
  criteria   jsonb NOT NULL,
  deleted    integer NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

SELECT soma_tenant_table('memories'), soma_tenant_table('memory_links'), soma_tenant_table('forget_receipts');
