"""Memory verbs: remember, recall, get, list, delete, link, links, forget, import, export."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from somastack.cli.output import api_call, console, err, parse_pairs, print_json, table
from somastack.client import Client
from somastack.config import get_settings

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
NsOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="namespace")]


def client() -> Client:
    s = get_settings()
    return Client(s.server_url, tenant=s.tenant if "tenant" in s.model_fields_set else None,
                  api_key=s.credential)


def remember(
    content: Annotated[str, typer.Argument(help="the text to remember")],
    namespace: NsOpt = None,
    kind: Annotated[str, typer.Option(help="episodic | semantic | procedural")] = "episodic",
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="repeatable")] = None,
    importance: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    meta: Annotated[list[str] | None, typer.Option("--meta", "-m", help="key=value, repeatable")] = None,
    key: Annotated[str | None, typer.Option(help="client key (upsert)")] = None,
    ttl: Annotated[int | None, typer.Option("--ttl", help="expire after N seconds")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Remember one item."""
    out = api_call(lambda: client().remember(
        content, namespace=namespace, kind=kind, tags=tag or [], importance=importance,
        metadata=parse_pairs(meta, "--meta"), key=key, ttl_s=ttl))
    print_json(out) if json_out else console.print(f"{out['status']} {out['id']}")


def recall(
    query: Annotated[str, typer.Argument(help="what to look for")],
    namespace: NsOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=100)] = 10,
    kind: Annotated[list[str] | None, typer.Option(help="only these kinds")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="all of these tags")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", "-m", help="metadata key=value")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Recall the memories that best match QUERY, with their scores."""
    filters: dict[str, Any] = {"kind": kind, "tags": tag, "metadata": parse_pairs(meta, "--meta") or None}
    out = api_call(lambda: client().recall(
        query, namespace=namespace, top_k=top_k, filters={k: v for k, v in filters.items() if v}))
    if json_out:
        print_json(out)
        return
    table(f"recall: {query}  ({out['timings_ms']['total']:.1f} ms)", ["#", "score", "memory", "id"],
          [[i + 1, f"{e['score']:.3f}", e["memory"]["content"], e["memory"]["id"]]
           for i, e in enumerate(out["evidence"])])


def get(memory_id: str, json_out: JsonOpt = False) -> None:
    """Show one memory."""
    out = api_call(lambda: client().get(memory_id))
    print_json(out) if json_out else table("memory", ["field", "value"], [[k, v] for k, v in out.items()])


def list_(
    namespace: NsOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List memories in creation order, a page at a time."""
    out = api_call(lambda: client().list(namespace=namespace, limit=limit, cursor=cursor))
    if json_out:
        print_json(out)
        return
    table("memories", ["created", "namespace", "content", "id"],
          [[m["created_at"][:19], m["namespace"], m["content"], m["id"]] for m in out["items"]])
    if out["next_cursor"]:
        console.print(f"more: --cursor {out['next_cursor']}")


def delete(memory_id: str) -> None:
    """Delete one memory and its links."""
    api_call(lambda: client().delete(memory_id))
    console.print(f"deleted {memory_id}")


def link(src: str, dst: str, rel: Annotated[str, typer.Option()] = "related",
         weight: Annotated[float, typer.Option(min=0, max=1)] = 1.0, json_out: JsonOpt = False) -> None:
    """Link memory SRC to memory DST."""
    out = api_call(lambda: client().link(src, dst, rel, weight))
    print_json(out) if json_out else console.print(f"linked {src} -{rel}-> {dst}")


def links(memory_id: str, json_out: JsonOpt = False) -> None:
    """Show a memory's outgoing and incoming links."""
    out = api_call(lambda: client().links(memory_id))
    if json_out:
        print_json(out)
        return
    rows = [["out", x["rel"], x["dst"], x["weight"]] for x in out["outgoing"]]
    rows += [["in", x["rel"], x["src"], x["weight"]] for x in out["incoming"]]
    table(f"links of {memory_id}", ["dir", "rel", "other", "weight"], rows)


def forget(
    namespace: NsOpt = None,
    subject: Annotated[list[str] | None, typer.Option(help="metadata key=value to match")] = None,
    before: Annotated[datetime | None, typer.Option(help="created before (ISO time)")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete every memory matching all the given criteria; prints the receipt id."""
    if not yes:
        typer.confirm("Delete the matching memories for good?", abort=True)
    out = api_call(lambda: client().forget(
        namespace=namespace, subject=parse_pairs(subject, "--subject") or None,
        before=before.isoformat() if before else None))
    print_json(out) if json_out else console.print(f"deleted {out['deleted']} (receipt {out['receipt_id']})")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=err)


def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL, one memory per line")],
    namespace: NsOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1000)] = 200,
    restart: Annotated[bool, typer.Option(help="ignore saved progress and start over")] = False,
    reembed: Annotated[bool, typer.Option(help="drop stored vectors and embed again")] = False,
) -> None:
    """Import memories from JSONL (as written by `soma export`), resumably.

    Progress is saved beside the file after every acknowledged batch; running the same command
    again continues from there. Re-sent items are harmless: same content or key is merged.
    """
    state_file = file.with_name(file.name + ".soma-import.json")
    done = 0 if restart or not state_file.exists() else json.loads(state_file.read_text())["lines"]
    lines = file.read_text().splitlines()
    c = client()
    with _progress() as bar:
        task = bar.add_task(f"import {file.name}", total=len(lines), completed=done)
        for start in range(done, len(lines), batch_size):
            items = [_import_item(line, reembed) for line in lines[start : start + batch_size]]
            api_call(partial(c.remember_batch, items, namespace=namespace))
            done = min(start + batch_size, len(lines))
            _save_progress(state_file, done)
            bar.update(task, completed=done)
    state_file.unlink(missing_ok=True)
    console.print(f"imported {len(lines)} lines from {file}")


def _save_progress(state_file: Path, done: int) -> None:
    """Write progress atomically: a kill mid-write must leave the previous state, not a torn file."""
    tmp = state_file.with_name(state_file.name + ".tmp")
    with tmp.open("w") as f:
        f.write(json.dumps({"lines": done}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_file)


_EXPORT_ONLY = {"id", "created_at", "updated_at", "content_hash"}


def _import_item(line: str, reembed: bool) -> dict[str, Any]:
    item = {k: v for k, v in json.loads(line).items() if k not in _EXPORT_ONLY}
    if reembed:
        item.pop("embedding", None)
        item.pop("embedder", None)
    return item


def export(
    namespace: NsOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="file (default: stdout)")] = None,
) -> None:
    """Export memories as JSONL, with their vectors and embedder id."""
    c = client()
    sink = out.open("w") if out else None
    n = 0
    for m in c.iter_memories(namespace=namespace, limit=500, include_embedding=True):
        line = json.dumps(m, default=str)
        print(line, file=sink) if sink else typer.echo(line)
        n += 1
    if sink:
        sink.close()
        err.print(f"exported {n} memories to {out}")


def register(app: typer.Typer) -> None:
    verbs: list[tuple[Callable[..., None], str]] = [
        (remember, "remember"), (recall, "recall"), (get, "get"), (list_, "list"),
        (delete, "delete"), (link, "link"), (links, "links"), (forget, "forget"),
        (import_, "import"), (export, "export")]
    for fn, name in verbs:
        app.command(name)(fn)
