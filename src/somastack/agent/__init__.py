"""SomaGent: the agent runtime (LLM providers, tool broker; the turn loop builds on these)."""
