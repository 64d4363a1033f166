-- Per-session working memory when Redis is not configured: a bounded set of items per
-- (tenant, session); `item_key` is the memory id, or the content hash of an item not stored.
CREATE TABLE IF NOT EXISTS working_memory (
  tenant_id   text NOT NULL,
  session_id  text NOT NULL,
  item_key    text NOT NULL,
  memory_id   uuid,
  content     text NOT NULL,
  vector      real[] NOT NULL,
  source      text NOT NULL CHECK (source IN ('recalled', 'new')),
  hits        integer NOT NULL DEFAULT 1,
  admitted_at timestamptz NOT NULL,
  seen_at     timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, session_id, item_key)
);
CREATE INDEX IF NOT EXISTS working_memory_seen_idx ON working_memory (seen_at);

SELECT soma_tenant_table('working_memory');
