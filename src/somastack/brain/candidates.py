"""Recall's first stage in SQL: ANN on memory and context vectors, BM25 full text, chain
neighbours — one round trip — plus the query's term statistics and the namespace's speakers."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from somastack.brain.memory import CHAIN
from somastack.brain.model import LIVE_M, MEMORY_COLUMNS, RecallQuery

BM25_K1, BM25_B = 1.2, 0.75
# The tenant predicate of the statistics queries: the explicit tenant and, as row-level security
# would, the transaction's bound tenant (these queries run without the RLS role; see recall).
TENANT = "tenant_id = %(tenant)s AND tenant_id = current_setting('app.tenant_id')"
LEX_MAX_POSTINGS = 500  # about how many memories the lexical list may score (see plan_terms)
SMALL_NAMESPACE = 2000  # namespaces up to this size are matched on every query term
CONJUNCTIVE_TERMS = 4  # past the budget: pairs among this many rarest terms
# What the features read of a candidate's metadata, so that only the evidence returned is parsed
# (json.loads of every candidate's metadata was a tenth of recall's Python time): the episode
# (metadata.session as canonical JSON, NULL when absent) and the speaker (when a string).
FEATURE_COLUMNS = (
    "m.metadata::text AS metadata_json, (m.metadata -> 'session')::text AS session_key, "
    "CASE WHEN jsonb_typeof(m.metadata -> 'speaker') = 'string' "
    "THEN m.metadata ->> 'speaker' END AS speaker"
)


@dataclass
class LexicalPlan:
    """The query terms that score (with their BM25 idf), which of them must co-occur, and avgdl."""

    lexemes: list[str]
    idf: list[float]
    avgdl: float
    pairs: list[tuple[str, str]] = field(default_factory=list)  # select: any of these pairs
    max_scored: int | None = None  # score at most this many matching memories (None: all)

    @property
    def tsquery(self) -> str:
        if self.pairs:
            return " | ".join(f"({_quoted(a)} & {_quoted(b)})" for a, b in self.pairs)
        return " | ".join(_quoted(x) for x in self.lexemes)

    @property
    def term_queries(self) -> list[str]:
        """One tsquery per lexeme, in the order of `lexemes` and `idf`."""
        return [_quoted(x) for x in self.lexemes]


def _quoted(lexeme: str) -> str:
    """The lexeme as a tsquery operand."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def bm25_idf(df: np.ndarray, n: float) -> np.ndarray:
    """ln(1 + (N − df + ½)/(df + ½)): positive, and falling as a term gets more common."""
    return np.log1p((n - df + 0.5) / (df + 0.5))


def plan_terms(terms: list[tuple[str, int]], docs: float, total_len: float,
               max_postings: int = LEX_MAX_POSTINGS) -> LexicalPlan:
    """Choose what to match so that the memories scored stay few (≈ max_postings).

    Namespaces of up to SMALL_NAMESPACE memories are matched on every term. Otherwise terms are
    kept rarest first while their summed document frequencies fit the budget (the rarest always).
    When even the rarest does not fit and the query has several terms, memories must hold a pair
    of the rarest terms instead: pairs are taken by their expected co-occurrence df_i·df_j/N
    (independence), cheapest first, within the budget. Common terms carry little information
    (low idf) and cost the most to score.

    Past SMALL_NAMESPACE the budget is also enforced: at most max_postings matching memories are
    scored (the first the index yields). Document frequencies cannot tell correlated terms
    apart, so a plan can still match many more: the words of one phrase always co-occur, and
    their pair matches as often as each word (2,700 memories instead of the ~100 expected at
    100,000 memories), and a query whose only informative term is common matches thousands.
    """
    present = sorted((df, lex) for lex, df in terms if df > 0)
    n = max(docs, 1.0)
    budget = float("inf") if docs <= SMALL_NAMESPACE else max_postings
    chosen: list[tuple[int, str]] = []
    postings = 0
    for df, lex in present:
        if chosen and postings + df > budget:
            break
        chosen.append((df, lex))
        postings += df
    pairs: list[tuple[str, str]] = []
    if postings > budget and len(present) > 1:
        rarest = present[:CONJUNCTIVE_TERMS]
        ranked = sorted((da * db / n, a, b) for (da, a), (db, b) in combinations(rarest, 2))
        cost = 0.0
        for est, a, b in ranked:
            if pairs and cost + est > budget:
                break
            pairs.append((a, b))
            cost += est
        used = {x for p in pairs for x in p}
        chosen = [(df, lex) for df, lex in present if lex in used]
    dfs = np.array([df for df, _ in chosen], dtype=np.float64)
    idf = bm25_idf(dfs, n) if chosen else dfs
    return LexicalPlan([lex for _, lex in chosen], [float(x) for x in idf],
                       total_len / docs if docs else 1.0, pairs,
                       None if docs <= SMALL_NAMESPACE else max_postings)


async def query_context(conn: psycopg.AsyncConnection[Any], tenant: str, namespace: str | None,
                        text: str) -> tuple[LexicalPlan, list[str]]:
    """In one round trip: the query's terms stemmed as the index does, looked up in the namespace
    statistics (→ the BM25 plan), and the speakers known in the namespace.

    Prepared at first use and run on its generic plan (recall's transaction sets
    plan_cache_mode): left to choose, PostgreSQL gave this statement a custom plan at every
    execution, planning it each time, while the generic plan gives the same answers in about
    half the time (1.1 → 0.6 ms per query over 400 bench queries). The candidate query (`send`)
    likewise: PostgreSQL settles on its generic plan by itself, but only after planning the
    first ten executions on every connection (1.3 ms each) for each number of query terms."""
    ns = "AND namespace = %(ns)s" if namespace is not None else ""
    cur = await conn.execute(
        f"""
        WITH q AS (SELECT DISTINCT unnest(tsvector_to_array(to_tsvector('english', %(text)s))) AS lexeme)
        SELECT q.lexeme,
               (SELECT coalesce(sum(df), 0) FROM lexicon
                 WHERE {TENANT} {ns} AND lexeme = q.lexeme) AS df,
               (SELECT coalesce(sum(docs), 0) FROM namespace_stats WHERE {TENANT} {ns}) AS docs,
               (SELECT coalesce(sum(total_len), 0) FROM namespace_stats
                 WHERE {TENANT} {ns}) AS total_len,
               array(SELECT DISTINCT speaker FROM speakers
                 WHERE {TENANT} {ns} AND n > 0 LIMIT 200) AS speakers
        FROM q RIGHT JOIN (SELECT 1) AS one ON true""",
        {"text": text, "tenant": tenant, "ns": namespace}, prepare=True,
    )
    rows = await cur.fetchall()
    first = rows[0]  # the right join yields one row even for a query of stop words only
    plan = plan_terms([(r["lexeme"], int(r["df"])) for r in rows if r["lexeme"] is not None],
                      float(first["docs"]), float(first["total_len"]))
    return plan, list(first["speakers"])


def filters_sql(q: RecallQuery, params: dict[str, Any]) -> str:
    """The WHERE clause every candidate list shares: tenant, liveness, embedder, filters."""
    # The second predicate is the row-level-security policy's, applied by hand: the candidate
    # query runs without the RLS role so that its indexes can be used (see Database.tenant).
    where = ["m.tenant_id = %(tenant)s", "m.tenant_id = current_setting('app.tenant_id')", LIVE_M,
             "m.embedder = %(embedder)s"]
    f = q.filters
    if q.namespace is not None:
        where.append("m.namespace = %(ns)s")
        params["ns"] = q.namespace
    if f.kinds:
        where.append("m.kind = ANY(%(kinds)s)")
        params["kinds"] = f.kinds
    if f.tags:
        where.append("m.tags @> %(tags)s")
        params["tags"] = f.tags
    if f.time_from is not None:
        where.append("coalesce(m.event_time, m.created_at) >= %(t_from)s")
        params["t_from"] = f.time_from
    if f.time_to is not None:
        where.append("coalesce(m.event_time, m.created_at) <= %(t_to)s")
        params["t_to"] = f.time_to
    if f.metadata:
        where.append("m.metadata @> %(meta)s")
        params["meta"] = Jsonb(f.metadata)
    return " AND ".join(where)


def held_sql(terms: int) -> str:
    """A lower bound of memory m's BM25 over the plan's `terms` lexemes (params lexq: one
    tsquery per lexeme, idf, avgdl): BM25 with every held lexeme counted once (tf = 1),

        Σ_{t ∈ q ∩ d} idf(t) · (k1 + 1) / (1 + k1·(1 − b + b·|d|/avgdl)),

    one `@@` per query lexeme (a binary search in the tsvector). BM25 grows with tf, so this is
    at most the memory's BM25, and equal to it unless a query lexeme repeats in the memory (in
    0.24% of memory-lexeme pairs on the scale bench's corpus: memories are short)."""
    if terms == 0:
        return "0::float8"
    held = " + ".join(f"CASE WHEN m.tsv @@ (%(lexq)s::tsquery[])[{i}] "
                      f"THEN (%(idf)s::float8[])[{i}] ELSE 0 END" for i in range(1, terms + 1))
    return (f"({held}) * {BM25_K1 + 1} / (1 + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * "
            f"length(m.tsv) / %(avgdl)s))")


def candidate_sql(dims: int, where: str, neighbours: bool, terms: int) -> str:
    """ANN (memory vector, context vector), BM25 over the plan's `terms` lexemes, and chain
    neighbours, with their rows and their own chain links (prev/next: read once for the whole
    set; one index probe per row and direction had cost a quarter of the query).

    BM25: Σ_t idf(t)·tf·(k1+1) / (tf + k1·(1 − b + b·|d|/avgdl)), with |d| the number of
    distinct lexemes of the memory. The matching memories are first ranked by its tf = 1 lower
    bound (held_sql), and the best 2n of them get their exact BM25, summed in a scalar subquery
    over the query's lexemes only (marked with weight A and filtered on it before unnest). The
    positions that subquery reads were a third of the lexical list's cost when every match (up
    to 500) went through it. The list is the exact top n unless a memory outside the first 2n
    by the bound overtakes one inside by repeating query lexemes.
    """
    cols = ", ".join(f"m.{c.strip()}" for c in MEMORY_COLUMNS.split(",") if c.strip() != "metadata")
    nb = f"""
, nb AS MATERIALIZED (
  SELECT l.dst AS id FROM memory_links l, seed WHERE l.tenant_id = %(tenant)s AND l.rel = '{CHAIN}'
    AND l.src = ANY(seed.ids)
  UNION SELECT l.src FROM memory_links l, seed WHERE l.tenant_id = %(tenant)s AND l.rel = '{CHAIN}'
    AND l.dst = ANY(seed.ids)
)""" if neighbours else ", nb AS (SELECT NULL::uuid AS id WHERE false)"
    return f"""
WITH dense AS MATERIALIZED (
  SELECT m.id FROM memories m
  WHERE {where} AND vector_dims(m.embedding) = {dims}
  ORDER BY (m.embedding::vector({dims})) <=> %(qvec)s::vector({dims}) LIMIT %(n)s
), ctx AS MATERIALIZED (
  SELECT m.id FROM memories m
  WHERE {where} AND vector_dims(m.context_embedding) = {dims}
  ORDER BY (m.context_embedding::vector({dims})) <=> %(qvec)s::vector({dims}) LIMIT %(n)s
), held AS MATERIALIZED (
  SELECT m.id, m.tsv
  FROM (SELECT m.id, m.tsv FROM memories m
        WHERE {where} AND %(tsq)s <> '' AND m.tsv @@ %(tsq)s::tsquery LIMIT %(scored)s) AS m
  ORDER BY {held_sql(terms)} DESC, m.id LIMIT 2 * %(n)s
), lex AS MATERIALIZED (
  SELECT m.id, (
    SELECT sum((%(idf)s::float8[])[array_position(%(lexemes)s::text[], u.lexeme)]
               * (cardinality(u.positions)::float8 * ({BM25_K1} + 1))
               / (cardinality(u.positions)
                  + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * length(m.tsv) / %(avgdl)s)))
    FROM unnest(ts_filter(setweight(m.tsv, 'A', %(lexemes)s::text[]), '{{a}}')) AS u) AS bm25
  FROM held AS m
  ORDER BY bm25 DESC, m.id LIMIT %(n)s
), seed AS (
  SELECT array(SELECT id FROM dense UNION SELECT id FROM ctx UNION SELECT id FROM lex) AS ids
){nb}, found AS (
  SELECT (SELECT ids FROM seed) || coalesce((SELECT array_agg(id) FROM nb), '{{}}') AS ids
), chain AS MATERIALIZED (
  SELECT l.src, l.dst FROM memory_links l, found WHERE l.tenant_id = %(tenant)s
    AND l.rel = '{CHAIN}' AND l.src = ANY(found.ids)
  UNION SELECT l.src, l.dst FROM memory_links l, found WHERE l.tenant_id = %(tenant)s
    AND l.rel = '{CHAIN}' AND l.dst = ANY(found.ids)
), ranks AS (
  SELECT (SELECT array_agg(id) FROM dense) AS d, (SELECT array_agg(id) FROM ctx) AS c,
         (SELECT array_agg(id) FROM lex) AS l
)
SELECT {cols}, vector_send(m.embedding) AS embedding,
       vector_send(m.context_embedding) AS context_embedding, lex.bm25, {FEATURE_COLUMNS},
       array_position(ranks.d, m.id) - 1 AS dense_rank,
       array_position(ranks.c, m.id) - 1 AS context_rank,
       array_position(ranks.l, m.id) - 1 AS lexical_rank,
       prev.src AS prev_id, nxt.dst AS next_id
FROM ranks, memories m LEFT JOIN lex ON lex.id = m.id
  LEFT JOIN (SELECT DISTINCT ON (dst) dst, src FROM chain ORDER BY dst, src) AS prev
    ON prev.dst = m.id
  LEFT JOIN (SELECT DISTINCT ON (src) src, dst FROM chain ORDER BY src, dst) AS nxt
    ON nxt.src = m.id
WHERE m.id = ANY((SELECT ids FROM found)::uuid[]) AND {where}"""


def vector_rows(blobs: list[bytes], dims: int) -> np.ndarray:
    """pgvector binary values (vector_send: dims and a spare as two uint16, then big-endian
    float4) as one float32 matrix, converted in one step instead of one object per row."""
    raw = np.frombuffer(b"".join(blobs), dtype=">f4").reshape(len(blobs), dims + 1)
    return raw[:, 1:].astype(np.float32)


@dataclass
class Candidates:
    """The candidate set of one query: rows, vectors, first-stage ranks and chain structure."""

    rows: list[dict[str, Any]]
    vectors: np.ndarray  # (n, d) unit rows: the memories' own vectors
    context: np.ndarray  # (n, d) context vectors (own vector where a memory has none)
    bm25: np.ndarray  # BM25 score, 0 for memories without a text match
    query_vector: np.ndarray
    speakers: list[str]

    def __len__(self) -> int:
        return len(self.rows)

    def chain_pairs(self) -> list[tuple[int, int]]:
        """(i, j) index pairs of candidates linked on the chain (i → next j)."""
        if not any(r["next_id"] for r in self.rows):
            return []
        at = {r["id"]: i for i, r in enumerate(self.rows)}
        return [(i, at[r["next_id"]]) for i, r in enumerate(self.rows) if r["next_id"] in at]


async def send(conn: psycopg.AsyncConnection, tenant: str, q: RecallQuery, qvec: np.ndarray,
               plan: LexicalPlan, embedder_id: str, n: int, neighbours: bool = True
               ) -> psycopg.AsyncCursor[Any]:
    """Issue the candidate query; its rows are read with `unpack` (in a pipeline: once sent)."""
    params: dict[str, Any] = {"tenant": tenant, "embedder": embedder_id, "qvec": qvec, "n": n,
                              "tsq": plan.tsquery, "lexq": plan.term_queries, "lexemes": plan.lexemes,
                              "idf": plan.idf,
                              "avgdl": plan.avgdl, "scored": plan.max_scored}
    where = filters_sql(q, params)
    if n > 50:  # the pool's connections search 50 wide (store.database)
        await conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(n),))
    return await conn.execute(candidate_sql(len(qvec), where, neighbours, len(plan.lexemes)),
                              params, binary=True, prepare=True)


async def unpack(cur: psycopg.AsyncCursor[Any], qvec: np.ndarray, speakers: list[str]
                 ) -> Candidates:
    """The candidate query's rows as arrays."""
    rows = await cur.fetchall()
    dims = len(qvec)
    if not rows:
        empty = np.zeros((0, dims), dtype=np.float32)
        return Candidates([], empty, empty, np.zeros(0), qvec, speakers)
    own = vector_rows([r.pop("embedding") for r in rows], dims)
    ctx_blobs = [r.pop("context_embedding") for r in rows]
    context = own.copy()  # a memory without chain neighbours is its own context
    have = [i for i, b in enumerate(ctx_blobs) if b is not None]
    if have:
        context[have] = vector_rows([ctx_blobs[i] for i in have], dims)
    bm25 = np.array([r.pop("bm25") or 0.0 for r in rows], dtype=np.float64)
    return Candidates(rows, own, context, bm25, qvec, speakers)
