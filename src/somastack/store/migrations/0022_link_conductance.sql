-- FRGO conductance of memory links, learnt from recall feedback; a link without a row has the
-- configured initial conductance. Deleting the link (or a memory) deletes its conductance.
CREATE TABLE IF NOT EXISTS link_conductance (
  tenant_id   text NOT NULL,
  src         uuid NOT NULL,
  dst         uuid NOT NULL,
  rel         text NOT NULL,
  conductance real NOT NULL CHECK (conductance > 0),
  updates     integer NOT NULL DEFAULT 0,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, src, dst, rel),
  FOREIGN KEY (tenant_id, src, dst, rel)
    REFERENCES memory_links (tenant_id, src, dst, rel) ON DELETE CASCADE
);

SELECT soma_tenant_table('link_conductance');
