"""Invariants of the recall scoring functions."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from somastack.brain.candidates import Candidates, bm25_idf, plan_terms
from somastack.brain.recall import session_feature

terms = st.lists(st.tuples(st.text("abcdefgh", min_size=1, max_size=5), st.integers(0, 10_000)),
                 max_size=12, unique_by=lambda t: t[0])


@given(st.integers(1, 100_000), st.lists(st.integers(0, 100_000), min_size=2, max_size=20))
def test_idf_is_positive_and_falls_with_frequency(n: int, dfs: list[int]) -> None:
    df = np.sort(np.minimum(np.array(dfs, dtype=float), n))
    idf = bm25_idf(df, float(n))
    assert (idf > 0).all() and (np.diff(idf) <= 1e-12).all()


@given(terms, st.integers(1, 20_000))
def test_plan_keeps_rarest_terms_within_the_budget(t: list[tuple[str, int]], cap: int) -> None:
    docs = 20_000
    plan = plan_terms(t, docs=docs, total_len=200_000, max_postings=cap)
    df = dict(t)
    chosen = [df[x] for x in plan.lexemes]
    present = sorted(d for _, d in t if d > 0)
    assert all(d > 0 for d in chosen) and chosen == sorted(chosen)
    assert len(plan.idf) == len(plan.lexemes) and plan.avgdl == 10.0
    assert plan.max_scored == cap  # a large namespace: the budget also caps what is scored
    if not present:
        assert plan.lexemes == [] and plan.tsquery == ""
    elif plan.pairs:  # the rarest term alone was over budget: pairs within the expected budget
        assert present[0] > cap and len(present) > 1
        est = [df[a] * df[b] / docs for a, b in plan.pairs]
        assert sum(est) <= cap or len(est) == 1
        assert {x for p in plan.pairs for x in p} == set(plan.lexemes)
    else:
        assert plan.lexemes, "the rarest present term is always kept"
        assert sum(chosen) <= cap or len(present) == 1 or len(chosen) == 1


def test_small_namespaces_match_every_term() -> None:
    plan = plan_terms([("a", 900), ("b", 800)], docs=1000, total_len=10_000, max_postings=10)
    assert sorted(plan.lexemes) == ["a", "b"] and not plan.pairs and plan.max_scored is None


def test_tsquery_quotes_lexemes() -> None:
    plan = plan_terms([("o'neil", 3), ("back\\slash", 2)], docs=10, total_len=10)
    assert plan.tsquery == "'back\\\\slash' | 'o''neil'"


def test_over_budget_the_cheapest_pairs_must_co_occur() -> None:
    plan = plan_terms([("last", 16739), ("weekend", 5645), ("ada", 1983), ("berg", 6566)],
                      docs=100_000, total_len=1e6, max_postings=500)
    assert plan.pairs == [("ada", "weekend"), ("ada", "berg")]
    assert plan.tsquery == "('ada' & 'weekend') | ('ada' & 'berg')"
    assert plan.lexemes == ["ada", "weekend", "berg"]


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(-10, 10)), min_size=1, max_size=40))
def test_session_term_is_the_mean_of_the_episodes_three_best(memories: list[tuple[int, float]]
                                                              ) -> None:
    rows = [{"session_key": str(s), "event_time": None, "id": i}
            for i, (s, _) in enumerate(memories)]
    scores = np.array([x for _, x in memories])
    c = Candidates(rows, np.zeros((len(rows), 2)), np.zeros((len(rows), 2)), np.zeros(len(rows)),
                   np.zeros(2), [])
    got = session_feature(c, {"_score": scores})
    for i, (s, _) in enumerate(memories):
        best = sorted(x for t, x in memories if t == s)[-3:]
        assert abs(got[i] - sum(best) / len(best)) < 1e-9
