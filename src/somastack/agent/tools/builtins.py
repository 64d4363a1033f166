"""The built-in tools: python.eval (sandbox), http.fetch (egress allow-list), memory.recall and
memory.remember (thin wrappers over the brain, acting for the calling context's tenant)."""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator, Collection
from typing import Any

import httpx

from somastack.agent.tools.registry import ToolContext, ToolDef, ToolOutput
from somastack.agent.tools.sandbox import PYTHON, SandboxJob, SandboxOutcome
from somastack.brain.embed import AsyncEmbedder
from somastack.brain.memory import remember
from somastack.brain.model import MemoryDraft, RecallQuery
from somastack.brain.recall import recall
from somastack.errors import InvalidInput, ToolNotAllowed
from somastack.store import Database

MAX_REDIRECTS = 3


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def python_eval_tool(max_code_chars: int = 20_000) -> ToolDef:
    """Run a Python program in the sandbox; stdout streams, the result has exit code and output."""

    def job(args: dict[str, Any]) -> SandboxJob:
        return SandboxJob([PYTHON, "-I", "-S", "main.py"], files={"main.py": args["code"]})

    def parse(outcome: SandboxOutcome) -> ToolOutput:
        return ToolOutput({"exit_code": outcome.exit_code, "stdout": outcome.stdout,
                           "stderr": outcome.stderr})

    return ToolDef(
        name="python.eval",
        description="Run a Python 3 program (standard library only, no network) and return "
                    "what it prints.",
        args_schema=_object({"code": {"type": "string", "minLength": 1,
                                      "maxLength": max_code_chars}}, ["code"]),
        result_schema=_object({"exit_code": {"type": "integer"}, "stdout": {"type": "string"},
                               "stderr": {"type": "string"}}, ["exit_code", "stdout", "stderr"]),
        kind="sandbox", job=job, parse=parse, example=("What is 2+3?", {"code": "print(2+3)"}),
    )


def host_allowed(url: httpx.URL, allowed: Collection[str]) -> bool:
    """Whether the URL's host is on the allow-list: `host`, `host:port` or `*.domain` entries."""
    host = (url.host or "").lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    for entry in (a.lower() for a in allowed):
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if entry in (host, f"{host}:{port}"):
            return True
    return False


def http_fetch_tool(allowed_hosts: Collection[str], *, max_bytes: int, timeout_s: float) -> ToolDef:
    """GET a URL whose host (and every redirect's) is on the egress allow-list; body capped."""
    allowed = tuple(allowed_hosts)

    def checked(raw: str) -> httpx.URL:
        try:
            url = httpx.URL(raw)
        except (httpx.InvalidURL, TypeError) as exc:
            raise InvalidInput(f"not a URL: {exc}", field="arguments.url") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidInput("an absolute http(s) URL is required", field="arguments.url")
        if not host_allowed(url, allowed):
            raise ToolNotAllowed(f"host {url.host!r} is not on the egress allow-list",
                                 field="arguments.url")
        return url

    async def run(ctx: ToolContext, args: dict[str, Any]) -> AsyncGenerator[str | ToolOutput, None]:
        url = checked(args["url"])
        body, egress = bytearray(), 0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False
                                     ) as client:
            for _ in range(MAX_REDIRECTS + 1):
                async with client.stream("GET", url) as resp:
                    egress += len(str(url)) + sum(len(k) + len(v) for k, v in resp.headers.raw)
                    if resp.is_redirect and "location" in resp.headers:
                        url = checked(str(url.join(resp.headers["location"])))
                        continue
                    async for chunk in resp.aiter_bytes():
                        take = chunk[: max_bytes - len(body)]
                        body += take
                        egress += len(take)
                        if text := decoder.decode(take):
                            yield text
                        if len(body) >= max_bytes:
                            break
                    truncated = len(body) >= max_bytes
                    yield ToolOutput({"url": str(url), "status": resp.status_code,
                                      "content_type": resp.headers.get("content-type", ""),
                                      "body": body.decode(errors="replace"),
                                      "truncated": truncated}, egress_bytes=egress)
                    return
        raise InvalidInput(f"more than {MAX_REDIRECTS} redirects", field="arguments.url")

    return ToolDef(
        name="http.fetch",
        description="Fetch a web page (GET) from an allowed host and return its text.",
        args_schema=_object({"url": {"type": "string", "minLength": 1, "maxLength": 2048}}, ["url"]),
        result_schema=_object({
            "url": {"type": "string"}, "status": {"type": "integer"},
            "content_type": {"type": "string"}, "body": {"type": "string"},
            "truncated": {"type": "boolean"}}, ["url", "status", "content_type", "body", "truncated"]),
        run=run, max_egress_bytes=max_bytes + 64 * 1024 * (MAX_REDIRECTS + 1),
        example=("Read the page https://example.com/", {"url": "https://example.com/"}),
    )


def memory_tools(db: Database, embedder: AsyncEmbedder, *, namespace: str, max_bytes: int,
                 candidates: int = 30) -> list[ToolDef]:
    """memory.recall and memory.remember in one namespace (the persona's), for ctx.tenant;
    `candidates` is the size of recall's first-stage lists (SOMA_RECALL_CANDIDATES)."""

    async def run_recall(ctx: ToolContext, args: dict[str, Any]
                         ) -> AsyncGenerator[str | ToolOutput, None]:
        found = await recall(db, embedder, ctx.tenant,
                             RecallQuery(args["query"], namespace=namespace,
                                         top_k=args.get("top_k", 5), include_scores=False),
                             candidates=candidates)
        yield ToolOutput({"evidence": [
            {"id": str(e.memory["id"]), "content": e.memory["content"], "score": float(e.score)}
            for e in found.evidence]})

    async def run_remember(ctx: ToolContext, args: dict[str, Any]
                           ) -> AsyncGenerator[str | ToolOutput, None]:
        draft = MemoryDraft(namespace=namespace, content=args["content"],
                            tags=args.get("tags", []), importance=args.get("importance", 0.5),
                            source=f"agent:{ctx.agent}" if ctx.agent else "agent",
                            trace_id=ctx.trace_id or None)
        (written,) = await remember(db, embedder, ctx.tenant, [draft], max_bytes=max_bytes,
                                    field_prefix="arguments.")
        yield ToolOutput({"id": str(written.id), "status": written.status},
                         storage_bytes=len(args["content"].encode()))

    evidence = {"type": "object", "properties": {"id": {"type": "string"},
                "content": {"type": "string"}, "score": {"type": "number"}}}
    return [
        ToolDef(
            name="memory.recall", description="Search long-term memory for what is relevant.",
            args_schema=_object({"query": {"type": "string", "minLength": 1, "maxLength": 1000},
                                 "top_k": {"type": "integer", "minimum": 1, "maximum": 20}},
                                ["query"]),
            result_schema=_object({"evidence": {"type": "array", "items": evidence}}, ["evidence"]),
            run=run_recall, read_only=True,
            example=("Where does Ana live?", {"query": "Ana lives in"}),
        ),
        ToolDef(
            name="memory.remember", description="Store a fact in long-term memory.",
            args_schema=_object({
                "content": {"type": "string", "minLength": 1, "maxLength": max_bytes},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 64},
                         "maxItems": 16},
                "importance": {"type": "number", "minimum": 0, "maximum": 1}}, ["content"]),
            result_schema=_object({"id": {"type": "string"}, "status": {"type": "string"}},
                                  ["id", "status"]),
            run=run_remember, max_storage_bytes=max_bytes,
            example=("Remember that I like green tea.", {"content": "The user likes green tea."}),
        ),
    ]
