"""PostgreSQL + pgvector storage: embedded server, pool, migrations."""

from somastack.store.database import Database, resolve_url

__all__ = ["Database", "resolve_url"]
