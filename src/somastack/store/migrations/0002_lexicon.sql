-- Per-namespace lexeme document frequencies and lengths, kept exact by statement-level triggers,
-- so recall can score BM25 in SQL and query only the informative (rare enough) terms.
CREATE TABLE IF NOT EXISTS lexicon (
  tenant_id text NOT NULL,
  namespace text NOT NULL,
  lexeme    text NOT NULL,
  df        integer NOT NULL,
  PRIMARY KEY (tenant_id, namespace, lexeme)
);

CREATE TABLE IF NOT EXISTS namespace_stats (
  tenant_id text NOT NULL,
  namespace text NOT NULL,
  docs      bigint NOT NULL,
  total_len bigint NOT NULL,
  PRIMARY KEY (tenant_id, namespace)
);

SELECT soma_tenant_table('lexicon'), soma_tenant_table('namespace_stats');

-- Each trigger adds (+1) or removes (-1) the rows of one statement from the statistics. Rows are
-- locked in key order so concurrent writers cannot deadlock.
CREATE OR REPLACE FUNCTION lexicon_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO lexicon AS l (tenant_id, namespace, lexeme, df)
  SELECT r.tenant_id, r.namespace, u.lexeme, count(*) FROM new_rows r, unnest(r.tsv) u
  GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
  ON CONFLICT (tenant_id, namespace, lexeme) DO UPDATE SET df = l.df + EXCLUDED.df;
  INSERT INTO namespace_stats AS s (tenant_id, namespace, docs, total_len)
  SELECT tenant_id, namespace, count(*), sum(length(tsv)) FROM new_rows
  GROUP BY 1, 2 ORDER BY 1, 2
  ON CONFLICT (tenant_id, namespace) DO UPDATE
    SET docs = s.docs + EXCLUDED.docs, total_len = s.total_len + EXCLUDED.total_len;
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION lexicon_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE lexicon l SET df = l.df - d.n
  FROM (SELECT r.tenant_id, r.namespace, u.lexeme, count(*) AS n FROM old_rows r, unnest(r.tsv) u
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3) d
  WHERE l.tenant_id = d.tenant_id AND l.namespace = d.namespace AND l.lexeme = d.lexeme;
  UPDATE namespace_stats s SET docs = s.docs - d.n, total_len = s.total_len - d.len
  FROM (SELECT tenant_id, namespace, count(*) AS n, sum(length(tsv)) AS len FROM old_rows
        GROUP BY 1, 2) d
  WHERE s.tenant_id = d.tenant_id AND s.namespace = d.namespace;
  RETURN NULL;
END $$;

-- An update that changes content or namespace moves the statistics (old out, new in).
CREATE OR REPLACE FUNCTION lexicon_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM old_rows o JOIN new_rows n USING (id)
                 WHERE o.tsv <> n.tsv OR o.namespace <> n.namespace) THEN
    RETURN NULL;
  END IF;
  UPDATE lexicon l SET df = l.df + d.n
  FROM (SELECT tenant_id, namespace, lexeme, sum(n) AS n FROM (
          SELECT r.tenant_id, r.namespace, u.lexeme, 1 AS n FROM new_rows r, unnest(r.tsv) u
          UNION ALL
          SELECT r.tenant_id, r.namespace, u.lexeme, -1 FROM old_rows r, unnest(r.tsv) u) x
        GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3) d
  WHERE l.tenant_id = d.tenant_id AND l.namespace = d.namespace AND l.lexeme = d.lexeme;
  INSERT INTO lexicon (tenant_id, namespace, lexeme, df)
  SELECT r.tenant_id, r.namespace, u.lexeme, count(*) FROM new_rows r, unnest(r.tsv) u
  WHERE NOT EXISTS (SELECT 1 FROM lexicon l WHERE l.tenant_id = r.tenant_id
                    AND l.namespace = r.namespace AND l.lexeme = u.lexeme)
  GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
  ON CONFLICT (tenant_id, namespace, lexeme) DO UPDATE SET df = lexicon.df + EXCLUDED.df;
  INSERT INTO namespace_stats AS s (tenant_id, namespace, docs, total_len)
  SELECT tenant_id, namespace, sum(n), sum(len) FROM (
    SELECT tenant_id, namespace, 1 AS n, length(tsv) AS len FROM new_rows
    UNION ALL SELECT tenant_id, namespace, -1, -length(tsv) FROM old_rows) x
  GROUP BY 1, 2 ORDER BY 1, 2
  ON CONFLICT (tenant_id, namespace) DO UPDATE
    SET docs = s.docs + EXCLUDED.docs, total_len = s.total_len + EXCLUDED.total_len;
  RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS memories_lexicon_ins ON memories;
CREATE TRIGGER memories_lexicon_ins AFTER INSERT ON memories
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lexicon_on_insert();
DROP TRIGGER IF EXISTS memories_lexicon_del ON memories;
CREATE TRIGGER memories_lexicon_del AFTER DELETE ON memories
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION lexicon_on_delete();
DROP TRIGGER IF EXISTS memories_lexicon_upd ON memories;
CREATE TRIGGER memories_lexicon_upd AFTER UPDATE ON memories
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION lexicon_on_update();

-- Existing rows (a database migrated from 0001 with data) are counted once.
TRUNCATE lexicon, namespace_stats;
INSERT INTO lexicon (tenant_id, namespace, lexeme, df)
SELECT m.tenant_id, m.namespace, u.lexeme, count(*) FROM memories m, unnest(m.tsv) u GROUP BY 1, 2, 3;
INSERT INTO namespace_stats (tenant_id, namespace, docs, total_len)
SELECT tenant_id, namespace, count(*), sum(length(tsv)) FROM memories GROUP BY 1, 2;
