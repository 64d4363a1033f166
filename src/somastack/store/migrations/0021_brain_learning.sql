-- Learning from feedback: fusion weights θ per tenant (every version kept, for rollback), the
-- recall traces feedback refers to, and the density matrix ρ per tenant and namespace.
CREATE TABLE IF NOT EXISTS brain_weights (
  tenant_id  text NOT NULL,
  version    integer NOT NULL CHECK (version >= 1),
  weights    jsonb NOT NULL,
  reason     text NOT NULL,
  trace_id   uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, version)
);

CREATE TABLE IF NOT EXISTS brain_traces (
  id          uuid PRIMARY KEY,
  tenant_id   text NOT NULL,
  session_id  text NOT NULL,
  namespace   text,
  query       text NOT NULL,
  weights     jsonb NOT NULL,
  items       jsonb NOT NULL,  -- [{id, features: {name: value}}], in returned order
  created_at  timestamptz NOT NULL DEFAULT now(),
  feedback_at timestamptz,
  reward      real,
  used_ids    uuid[]
);
CREATE INDEX IF NOT EXISTS brain_traces_tenant_idx ON brain_traces (tenant_id, created_at);

-- '*' is the namespace of recalls that span every namespace.
CREATE TABLE IF NOT EXISTS brain_density (
  tenant_id  text NOT NULL,
  namespace  text NOT NULL,
  dims       integer NOT NULL CHECK (dims > 0),
  rho        bytea NOT NULL,  -- dims × dims little-endian float32, row-major
  updates    integer NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, namespace)
);

SELECT soma_tenant_table('brain_weights'), soma_tenant_table('brain_traces'), soma_tenant_table('brain_density');
