"""Age-based retention: delete the rows of a table that are older than a number of days."""

from __future__ import annotations

from psycopg import sql

from somastack.store.database import Database


async def purge_older_than(db: Database, table: str, key: tuple[str, ...], older_than_days: float,
                           batch: int) -> int:
    """Delete every tenant's rows of `table` created more than `older_than_days` ago, `batch` at
    a time (short transactions, no long lock; rows whose foreign keys cascade go along); returns
    how many. `key` names the columns that identify a row; `created_at` should be indexed."""
    columns = sql.SQL(", ").join(map(sql.Identifier, key))
    delete = sql.SQL(
        "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "
        "WHERE created_at < now() - make_interval(secs => %s) LIMIT %s)"
    ).format(table=sql.Identifier(table), key=columns)
    total = 0
    while True:
        async with db.system() as conn:
            cur = await conn.execute(delete, (older_than_days * 86400, batch))
        total += cur.rowcount
        if cur.rowcount < batch:
            return total
