"""Every operation of the OpenAPI spec, fed malformed input: a clear 4xx, never a 500.

The cases derive from the spec (built by the app factory at collection time; a test checks the
server publishes the same one): each JSON body not JSON, an array, each required field missing,
each field of a wrong type, out of range, oversized or holding NUL, an unknown field; each query
and header parameter of the wrong type, out of range or oversized; each path parameter not an id.
The platform admin key (every scope) reaches the handlers. Every case is malformed in exactly
one place, so a 422 must name that place. A case the server accepts only writes fresh content
or names nothing that exists, and never starts long work: a turn needs a session token, and the
admin key is refused a turn before any model loads.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from somastack import Client
from somastack.api.app import create_app
from somastack.brain.embed import MiniLMEmbedder
from somastack.config import Settings
from somastack.governance.bootstrap import LOCAL_SIGNER
from somastack.governance.constitution import default_document, load_signer, sign

SPEC: dict[str, Any] = create_app(Settings()).openapi()
AUTH_HEADERS = {"authorization", "x-soma-tenant"}
METHODS = ("get", "post", "put", "patch", "delete")
# Placeholders, filled in when a case is sent (see `fill`)
PERSONA = "<persona-hash>"  # the hash of a real persona of the admin's tenant
SIGNATURES = "<signatures>"  # the server's own signer's signatures of the default document
UNIQUE = "<unique>"  # a new text each time: content is never merged into an earlier memory
# Valid values the schema cannot say (a real thing, a checked vocabulary, a document's shape),
# and the fields a field needs beside it: without them a case would be malformed twice.
NAMED: dict[str, Any] = {"persona_hash": PERSONA, "scopes": ["memory:read"], "content": UNIQUE,
                         "document": default_document(), "embedding": [0.1] * MiniLMEmbedder.dims}
TOGETHER: dict[str, dict[str, Any]] = {"embedding": {"embedder": MiniLMEmbedder.id},
                                       "document": {"signatures": SIGNATURES}}
BIG = "x" * 100_000
LONG = "x" * 4096
NUL = "fu\x00zz"
# a scalar of each JSON type, sent where the schema wants none of that type
SAMPLES: dict[str, Any] = {"string": "fuzz", "number": 1.5, "object": {"fuzz": 1}, "array": ["fuzz"],
                           "null": None}
TEXT_CANDIDATES = ("fuzz", "fuzz.check", "f" * 64)


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def members(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives of a schema (anyOf/oneOf flattened, $refs resolved)."""
    s = resolve(schema)
    alternatives = s.get("anyOf") or s.get("oneOf")
    return [m for a in alternatives for m in members(a)] if alternatives else [s]


def json_types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema accepts (integer does not include number); None: any."""
    out: set[str] = set()
    for m in members(schema):
        t = m.get("type")
        if t is None:
            return None
        out |= set(t) if isinstance(t, list) else {t}
    return out


def _of_type(schema: dict[str, Any], *types: str) -> list[dict[str, Any]]:
    return [m for m in members(schema) if m.get("type") in types]


def text_for(m: dict[str, Any], candidates: tuple[str, ...] = TEXT_CANDIDATES) -> str:
    """A string the schema member accepts."""
    if m.get("format") == "uuid":
        return str(uuid.uuid4())
    if m.get("format") == "date-time":
        return "2025-01-01T00:00:00Z"
    for text in candidates:
        if (not m.get("pattern") or re.search(m["pattern"], text)) \
                and m.get("minLength", 0) <= len(text) <= m.get("maxLength", len(text)):
            return text
    raise AssertionError(f"no sample string fits {m}: add one to TEXT_CANDIDATES")


def valid(schema: dict[str, Any], name: str = "") -> Any:
    """A value the schema accepts: required properties only, minimal arrays."""
    if name in NAMED:
        return NAMED[name]
    m = next((m for m in members(schema) if m.get("type") != "null"), members(schema)[0])
    if "enum" in m:
        return m["enum"][0]
    t = m.get("type")
    if t == "object":
        props, required = m.get("properties", {}), m.get("required", [])
        out = {k: valid(v, k) for k, v in props.items() if k in required}
        return {k: v for given in out for k, v in TOGETHER.get(given, {}).items()} | out
    if t == "array":
        return [valid(m["items"], name) for _ in range(m.get("minItems", 0))]
    if t == "integer":
        return max(int(m.get("minimum", 1)), int(m.get("exclusiveMinimum", 0)) + 1)
    if t == "number":
        low = m.get("minimum", 0.0)
        return (low + m.get("maximum", low + 1.0)) / 2
    if t == "boolean":
        return True
    if t == "string":
        return text_for(m)
    return None


def value_cases(schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(case, value) malformed for a JSON value of this schema."""
    types = json_types(schema)
    if types is None:
        return
    for t, sample in SAMPLES.items():
        if t not in types and not (t == "number" and "integer" in types):
            yield f"wrong type {t}", sample
    if _of_type(schema, "string"):
        yield "100 KB string", BIG
        yield "NUL in string", NUL
    for m in _of_type(schema, "integer", "number"):
        for bound, delta in (("minimum", -1), ("exclusiveMinimum", 0), ("maximum", 1),
                             ("exclusiveMaximum", 0)):
            if bound in m:
                yield f"{bound}{delta:+}", m[bound] + delta
        if m["type"] == "integer":
            yield "fraction", 1.5
        yield "2**70", 2**70
        yield "-2**70", -(2**70)
        yield "1e300", 1e300
        yield "NaN literal", float("nan")
        yield "Infinity literal", float("inf")
        if "string" not in types:
            yield "'NaN' string", "NaN"
    for m in _of_type(schema, "object"):
        if "properties" not in m and m.get("additionalProperties") is not False:
            yield "NUL in a key", {NUL: "fuzz"}
            yield "NUL in a value", {"fuzz": NUL}


def body_cases(schema: dict[str, Any], value: Any, where: str, depth: int = 0
               ) -> Iterator[tuple[str, str, Any]]:
    """(case, field at fault, this node's new value): one malformed spot in a valid value."""
    for m in _of_type(schema, "object"):
        if "properties" not in m or depth > 3:
            continue
        for name, sub in m["properties"].items():
            at = f"{where}.{name}" if where else name
            if name in m.get("required", []):
                yield "missing", at, {k: v for k, v in value.items() if k != name}
            parent = value if name in value else {**TOGETHER.get(name, {}), **value}
            child = value[name] if name in value else valid(sub, name)
            for case, spot, new in body_cases(sub, child, at, depth + 1):
                yield case, spot, {**parent, name: new}
        if m.get("additionalProperties") is False:
            at = f"{where}.fuzz_unknown" if where else "fuzz_unknown"
            yield "unknown field", at, {**value, "fuzz_unknown": "fuzz"}
    for m in _of_type(schema, "array"):
        if depth > 3:
            continue
        item = value[0] if isinstance(value, list) and value else valid(m["items"])
        rest = value[1:] if isinstance(value, list) else []
        for case, spot, new in body_cases(m["items"], item, f"{where}[0]", depth + 1):
            yield case, spot, [new, *rest]
    if where:
        for case, new in value_cases(schema):
            yield case, where, new


def param_cases(schema: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(case, raw value) malformed for a query or header parameter."""
    for m in _of_type(schema, "integer", "number"):
        yield from [("not a number", "fuzz"), ("NaN", "NaN"), ("Infinity", "Infinity"),
                    ("2**70", str(2**70)), ("-2**70", str(-(2**70)))]
        if m["type"] == "integer":
            yield "fraction", "1.5"
        for bound, delta in (("minimum", -1), ("maximum", 1)):
            if bound in m:
                yield f"{bound}{delta:+}", str(m[bound] + delta)
    if _of_type(schema, "boolean"):
        yield "not a boolean", "fuzz"
    for m in _of_type(schema, "string"):
        if m.get("format") == "date-time":
            yield from [("not a time", "fuzz"), ("impossible time", "2025-13-45T25:61:00Z"),
                        ("huge timestamp", str(2**70))]
        if "enum" in m:
            yield "not in enum", "fuzz"
    yield "long", LONG
    yield "NUL", NUL


PATH_CASES = [("not-a-uuid", "not-a-uuid"), ("%00", "%00"), ("NUL inside", "a%00b"),
              ("long", LONG), ("%FF", "%FF"), ("encoded slash", "a%2Fb"), ("negative", "-1"),
              ("2**70", str(2**70)), ("space", "%20"), ("dot-dot", "%2E%2E")]
BODY_LEVEL: list[tuple[str, bytes | None, str]] = [
    ("not JSON", b"{not json", "application/json"),
    ("JSON array", None, "application/json"),
    ("JSON null", b"null", "application/json"),
    ("empty body", b"", "application/json"),
    ("invalid UTF-8", b'{"fuzz": "\xff\xfe"}', "application/json"),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ("text/plain", None, "text/plain"),
]


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = field(default=None, repr=False)
    at: str | None = None  # the one place at fault, which a 422 must name

    def send(self, http: httpx.Client, fill: Callable[[bytes], bytes]) -> httpx.Response:
        content = None if self.content is None else fill(self.content)
        # a fresh connection each: a failing case never breaks the next one's
        headers = {**self.headers, "connection": "close"}
        with http.stream(self.method, self.path, params=self.params, headers=headers,
                         content=content) as resp:
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                resp.read()
        return resp


def dump(value: Any) -> bytes:
    """JSON as a client could send it: NaN and Infinity as the literals Python's json reads."""
    return json.dumps(value, allow_nan=True).encode()


def operation_cases(method: str, template: str, op: dict[str, Any]) -> Iterator[Case]:
    params = [p for p in op.get("parameters", []) if p["name"] not in AUTH_HEADERS]
    path_values = {p["name"]: _path_value(p["schema"]) for p in params if p["in"] == "path"}
    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    body = valid(body_schema) if body_schema else None
    json_headers = {"content-type": "application/json"} if body_schema else {}
    content = dump(body) if body_schema else None

    def url(**override: str) -> str:
        return template.format(**{**path_values, **override})

    def case(name: str, **kw: Any) -> Case:
        kw.setdefault("path", url())
        kw.setdefault("headers", json_headers)
        kw.setdefault("content", content)
        return Case(id=f"{method.upper()} {template} {name}", method=method.upper(), **kw)

    if body_schema:
        for name, given, ctype in BODY_LEVEL:  # None: the valid body, as the case says
            sent = dump([body]) if name == "JSON array" else dump(body) if given is None else given
            yield case(f"body: {name}", headers={"content-type": ctype}, content=sent, at="body")
        for name, spot, new in body_cases(body_schema, body, ""):
            yield case(f"{spot}: {name}", content=dump(new), at=spot)
    for p in params:
        for name, raw in (PATH_CASES if p["in"] == "path" else param_cases(p["schema"])):
            if p["in"] == "path":
                yield case(f"path {p['name']}: {name}", path=url(**{p["name"]: raw}), at=p["name"])
            elif p["in"] == "query":
                yield case(f"query {p['name']}: {name}", params={p["name"]: raw}, at=p["name"])
            elif "\x00" not in raw:  # a header cannot carry NUL at all
                yield case(f"header {p['name']}: {name}", headers={**json_headers, p["name"]: raw},
                           at=p["name"])


def _path_value(schema: dict[str, Any]) -> str:
    """A well-formed id of nothing that exists."""
    return text_for(members(schema)[0], ("absent0", *TEXT_CANDIDATES))


CASES = [c for path, ops in SPEC["paths"].items() for method, op in ops.items() if method in METHODS
         for c in operation_cases(method, path, op)]


@pytest.fixture(scope="module")
def http(server: str, admin_key: str) -> Iterator[httpx.Client]:
    with Client(server, api_key=admin_key) as admin:
        admin.http.timeout = httpx.Timeout(60)
        yield admin.http


@pytest.fixture(scope="module")
def fill(http: httpx.Client, settings: Settings) -> Callable[[bytes], bytes]:
    """A case's JSON with its placeholders replaced by real things of the admin's tenant."""
    resp = http.post("/v1/personas", json={"name": "fuzz-target", "system_prompt": "Be brief."})
    assert resp.status_code in (200, 201), resp.text
    signer = load_signer(settings.signer_dir / f"{LOCAL_SIGNER}.key")
    known = {PERSONA: resp.json()["hash"],
             SIGNATURES: sign({"document": default_document()}, *signer)["signatures"]}

    def filled(content: bytes) -> bytes:
        for placeholder, value in {**known, UNIQUE: f"fuzz {uuid.uuid4().hex}"}.items():
            content = content.replace(dump(placeholder), dump(value))
        return content

    return filled


def test_the_cases_come_from_the_served_spec(http: httpx.Client) -> None:
    assert http.get("/openapi.json").json() == SPEC


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_gets_a_clear_4xx(http: httpx.Client, fill: Callable[[bytes], bytes],
                                         case: Case) -> None:
    resp = case.send(http, fill)
    if resp.status_code >= 500:  # without a traceback: the server is logging its own, and
        # Python 3.11's ast (which both use) is not thread-safe
        pytest.fail(f"{resp.status_code}: {resp.text[:1000]}", pytrace=False)
    if resp.status_code < 400:
        return
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text[:1000]
    problem = resp.json()
    assert isinstance(problem.get("detail"), str) and problem["detail"], problem
    if resp.status_code in (400, 422) and case.at is not None:
        assert names(str(problem.get("field")), case.at), problem


def names(named: str, spot: str) -> bool:
    """Whether `named` names the field at `spot` (or a part of it); an item of a list may be
    named by the list: 'scopes' names the field of the bad item 'scopes[1]'."""
    field_of_spot = re.sub(r"(\[\d+\])+$", "", spot)
    return named in (spot, field_of_spot) or named.startswith((f"{spot}.", f"{spot}["))
