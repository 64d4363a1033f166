-- Per-tenant Rego overrides (package soma.tenant); they can only add denials to the base policy.
CREATE TABLE IF NOT EXISTS policy_overrides (
  tenant_id  text PRIMARY KEY REFERENCES tenants (id),
  module     text NOT NULL,
  checksum   text NOT NULL,
  updated_by text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
