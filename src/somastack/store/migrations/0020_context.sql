-- Context vectors (a memory embedded with its chain neighbours, rel 'next') and per-namespace
-- speaker statistics (metadata.speaker), both used by recall.
ALTER TABLE memories ADD COLUMN IF NOT EXISTS context_embedding vector;
CREATE INDEX IF NOT EXISTS memories_context_384_idx
  ON memories USING hnsw ((context_embedding::vector(384)) vector_cosine_ops)
  WHERE vector_dims(context_embedding) = 384;

CREATE TABLE IF NOT EXISTS speakers (
  tenant_id text NOT NULL,
  namespace text NOT NULL,
  speaker   text NOT NULL,
  n         integer NOT NULL,
  PRIMARY KEY (tenant_id, namespace, speaker)
);
SELECT soma_tenant_table('speakers');

CREATE OR REPLACE FUNCTION speakers_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO speakers AS s (tenant_id, namespace, speaker, n)
  SELECT tenant_id, namespace, metadata->>'speaker', count(*) FROM new_rows
  WHERE metadata ? 'speaker' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
  ON CONFLICT (tenant_id, namespace, speaker) DO UPDATE SET n = s.n + EXCLUDED.n;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION speakers_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE speakers s SET n = s.n - d.n
  FROM (SELECT tenant_id, namespace, metadata->>'speaker' AS speaker, count(*) AS n FROM old_rows
        WHERE metadata ? 'speaker' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3) d
  WHERE s.tenant_id = d.tenant_id AND s.namespace = d.namespace AND s.speaker = d.speaker;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION speakers_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM old_rows o JOIN new_rows n USING (id)
                 WHERE o.metadata->>'speaker' IS DISTINCT FROM n.metadata->>'speaker'
                    OR o.namespace <> n.namespace) THEN
    RETURN NULL;  -- e.g. a context-vector refresh
  END IF;
  INSERT INTO speakers AS s (tenant_id, namespace, speaker, n)
  SELECT tenant_id, namespace, speaker, sum(n) FROM (
    SELECT tenant_id, namespace, metadata->>'speaker' AS speaker, 1 AS n FROM new_rows
      WHERE metadata ? 'speaker'
    UNION ALL
    SELECT tenant_id, namespace, metadata->>'speaker', -1 FROM old_rows WHERE metadata ? 'speaker') x
  GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3
  ON CONFLICT (tenant_id, namespace, speaker) DO UPDATE SET n = s.n + EXCLUDED.n;
  RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS memories_speakers_ins ON memories;
CREATE TRIGGER memories_speakers_ins AFTER INSERT ON memories
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION speakers_on_insert();
DROP TRIGGER IF EXISTS memories_speakers_del ON memories;
CREATE TRIGGER memories_speakers_del AFTER DELETE ON memories
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION speakers_on_delete();
DROP TRIGGER IF EXISTS memories_speakers_upd ON memories;
CREATE TRIGGER memories_speakers_upd AFTER UPDATE ON memories
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION speakers_on_update();

TRUNCATE speakers;
INSERT INTO speakers (tenant_id, namespace, speaker, n)
SELECT tenant_id, namespace, metadata->>'speaker', count(*) FROM memories
WHERE metadata ? 'speaker' GROUP BY 1, 2, 3;

