-- Usage ledger (settled usage per tenant/agent/session/minute), budgets with spent and reserved
-- amounts, and open reservations. Reserve-before/settle-after runs with the budget rows locked,
-- so concurrent callers can never reserve past a limit.
CREATE TABLE IF NOT EXISTS usage_ledger (
  tenant_id     text NOT NULL,
  agent         text NOT NULL DEFAULT '',
  session       text NOT NULL DEFAULT '',
  ts_minute     timestamptz NOT NULL,
  tokens        bigint NOT NULL DEFAULT 0,
  tool_calls    bigint NOT NULL DEFAULT 0,
  storage_bytes bigint NOT NULL DEFAULT 0,
  egress_bytes  bigint NOT NULL DEFAULT 0,
  cost_cents    numeric(20, 6) NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, agent, session, ts_minute)
);
CREATE INDEX IF NOT EXISTS usage_ledger_time_idx ON usage_ledger (tenant_id, ts_minute);

-- scope: 'tenant', 'agent:<id>' or 'session:<id>'; a NULL limit is unlimited.
CREATE TABLE IF NOT EXISTS budgets (
  tenant_id              text NOT NULL,
  scope                  text NOT NULL CHECK (scope = 'tenant' OR scope ~ '^(agent|session):.+'),
  limit_tokens           bigint CHECK (limit_tokens >= 0),
  limit_tool_calls       bigint CHECK (limit_tool_calls >= 0),
  limit_storage_bytes    bigint CHECK (limit_storage_bytes >= 0),
  limit_egress_bytes     bigint CHECK (limit_egress_bytes >= 0),
  limit_cost_cents       numeric(20, 6) CHECK (limit_cost_cents >= 0),
  spent_tokens           bigint NOT NULL DEFAULT 0,
  spent_tool_calls       bigint NOT NULL DEFAULT 0,
  spent_storage_bytes    bigint NOT NULL DEFAULT 0,
  spent_egress_bytes     bigint NOT NULL DEFAULT 0,
  spent_cost_cents       numeric(20, 6) NOT NULL DEFAULT 0,
  reserved_tokens        bigint NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
  reserved_tool_calls    bigint NOT NULL DEFAULT 0 CHECK (reserved_tool_calls >= 0),
  reserved_storage_bytes bigint NOT NULL DEFAULT 0 CHECK (reserved_storage_bytes >= 0),
  reserved_egress_bytes  bigint NOT NULL DEFAULT 0 CHECK (reserved_egress_bytes >= 0),
  reserved_cost_cents    numeric(20, 6) NOT NULL DEFAULT 0 CHECK (reserved_cost_cents >= 0),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, scope)
);

CREATE TABLE IF NOT EXISTS budget_reservations (
  id            uuid PRIMARY KEY,
  tenant_id     text NOT NULL,
  agent         text NOT NULL DEFAULT '',
  session       text NOT NULL DEFAULT '',
  scopes        text[] NOT NULL,
  tokens        bigint NOT NULL DEFAULT 0,
  tool_calls    bigint NOT NULL DEFAULT 0,
  storage_bytes bigint NOT NULL DEFAULT 0,
  egress_bytes  bigint NOT NULL DEFAULT 0,
  cost_cents    numeric(20, 6) NOT NULL DEFAULT 0,
  created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS budget_reservations_age_idx ON budget_reservations (created_at);

SELECT soma_tenant_table('usage_ledger'), soma_tenant_table('budgets'), soma_tenant_table('budget_reservations');
