"""No tenant can read, infer or change another tenant's memories (API, then the RLS wall)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg
import pytest
from tests.conftest import tenant_rows

from somastack import Client, SomaAPIError


@pytest.fixture
def two_tenants(make_client: Callable[[str | None], Client]) -> tuple[Client, Client, str, str]:
    a_name, b_name = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    return make_client(a_name), make_client(b_name), a_name, b_name


def test_tenant_b_cannot_touch_tenant_a(two_tenants: tuple[Client, Client, str, str],
                                        db: psycopg.Connection) -> None:
    a, b, a_name, b_name = two_tenants
    secret = a.remember("Tenant A's launch code is 0451", namespace="shared-name",
                        metadata={"kind": "secret"})["id"]
    a_other = a.remember("another A memory", namespace="shared-name")["id"]
    mine = b.remember("B's own note", namespace="shared-name")["id"]

    hits = b.recall("launch code 0451", namespace="shared-name")["evidence"]
    assert [h["memory"]["id"] for h in hits] == [mine]
    assert all(h["memory"]["id"] != secret for h in b.recall("launch code")["evidence"])
    assert [m["id"] for m in b.list()["items"]] == [mine]
    for call in (lambda: b.get(secret), lambda: b.links(secret),
                 lambda: b.update(secret, content="overwritten"), lambda: b.delete(secret),
                 lambda: b.link(mine, secret), lambda: b.link(secret, a_other)):
        with pytest.raises(SomaAPIError) as e:
            call()
        assert e.value.status == 404  # indistinguishable from "does not exist"
    assert b.forget(namespace="shared-name")["deleted"] == 1
    assert b.forget(subject={"kind": "secret"})["deleted"] == 0
    # Same content in B's namespace does not merge into (or reveal) A's memory.
    same = b.remember("Tenant A's launch code is 0451", namespace="shared-name")
    assert same["status"] == "created" and same["id"] != secret

    assert a.get(secret)["content"] == "Tenant A's launch code is 0451"
    assert tenant_rows(db, a_name) == 2
    assert a.links(secret) == {"outgoing": [], "incoming": []}


def test_row_level_security_is_the_second_wall(two_tenants: tuple[Client, Client, str, str],
                                               database_url: str) -> None:
    a, _, a_name, b_name = two_tenants
    a.remember("only for A", namespace="rls")
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT set_config('role', 'soma_app', true), set_config('app.tenant_id', %s, true)",
                     (b_name,))
        # Even a query that forgets the tenant filter sees nothing of A's.
        assert conn.execute("SELECT count(*) FROM memories WHERE tenant_id = %s",
                            (a_name,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM lexicon WHERE tenant_id = %s",
                            (a_name,)).fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO memories (id, tenant_id, namespace, content, kind, content_hash,"
                         " embedder, embedding) VALUES (gen_random_uuid(), %s, 'x', 'forged',"
                         " 'episodic', 'h', 'e', '[1,2,3]')", (a_name,))
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT set_config('role', 'soma_app', true)")
        # No tenant set at all: nothing is visible.
        assert conn.execute("SELECT count(*) FROM memories").fetchone() == (0,)
