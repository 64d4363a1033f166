"""Governance: tenants, API keys, session tokens, the constitution, policy and the audit chain."""
