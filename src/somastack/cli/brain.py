"""`soma brain …`: context bundles, feedback, weights and rollback, bridge plans."""

from __future__ import annotations

from typing import Annotated

import typer

from somastack.cli.memory import JsonOpt, NsOpt, client
from somastack.cli.output import api_call, console, print_json, table

app = typer.Typer(no_args_is_help=True, help="Brain: context bundles, learning, bridge plans.")


@app.command()
def evaluate(
    query: Annotated[str, typer.Argument(help="what the agent is about to do or answer")],
    session: Annotated[str, typer.Option("--session", "-s", help="session id")] = "cli",
    namespace: NsOpt = None,
    budget: Annotated[int, typer.Option("--budget", "-b", min=16, help="prompt token budget")] = 1024,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=100)] = 10,
    json_out: JsonOpt = False,
) -> None:
    """A context bundle for QUERY: ranked memories, working memory and a cited prompt."""
    out = api_call(lambda: client().evaluate(session, query, namespace=namespace, token_budget=budget,
                                             top_k=top_k))
    if json_out:
        print_json(out)
        return
    table(f"evaluate: {query}", ["#", "score", "conf", "cited", "memory", "id"],
          [[i + 1, f"{m['score']:.3f}", "" if m["confidence"] is None else f"{m['confidence']:.2f}",
            "✓" if m["cited"] else "", m["content"], m["id"]] for i, m in enumerate(out["memories"])])
    console.print(out["prompt"], markup=False, highlight=False)
    console.print(f"{out['prompt_tokens']} tokens · weights v{out['weights_version']} · "
                  f"trace {out['trace_id']}")


@app.command()
def feedback(
    trace_id: Annotated[str, typer.Argument(help="trace_id of an evaluate answer")],
    used: Annotated[list[str] | None, typer.Option("--used", "-u", help="memory id used; repeatable")] = None,
    reward: Annotated[float, typer.Option(min=-1, max=1, help="how well it served, −1 … 1")] = 1.0,
    json_out: JsonOpt = False,
) -> None:
    """Tell the brain which memories of a trace were used; it learns its weights from that."""
    out = api_call(lambda: client().feedback(trace_id, used or [], reward))
    if json_out:
        print_json(out)
        return
    console.print(f"weights v{out['previous_version']} → v{out['version']}; "
                  f"{out['links_updated']} link(s) updated")


@app.command()
def weights(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="versions of history")] = 10,
    json_out: JsonOpt = False,
) -> None:
    """The current fusion weights, their bounds and their history."""
    out = api_call(lambda: client().weights(limit))
    if json_out:
        print_json(out)
        return
    cur = out["current"]
    table(f"weights v{cur['version']} ({cur['reason']})", ["feature", "θ", "bounds"],
          [[k, f"{v:.4f}", f"[{out['bounds'][k][0]}, {out['bounds'][k][1]}]"]
           for k, v in cur["weights"].items()])
    table("history", ["version", "reason", "at"],
          [[h["version"], h["reason"], h["created_at"]] for h in out["history"]])


@app.command()
def rollback(
    version: Annotated[int, typer.Argument(min=0, help="the version to restore (0 = defaults)")],
    json_out: JsonOpt = False,
) -> None:
    """Restore an earlier θ (it becomes the newest version)."""
    out = api_call(lambda: client().rollback_weights(version))
    print_json(out) if json_out else console.print(f"restored v{version} as v{out['version']}")


@app.command()
def plan(
    source: Annotated[str, typer.Argument(metavar="FROM", help="cue text or memory id")],
    target: Annotated[str, typer.Argument(metavar="TO", help="cue text or memory id")],
    namespace: NsOpt = None,
    max_hops: Annotated[int, typer.Option(min=1, max=8)] = 4,
    json_out: JsonOpt = False,
) -> None:
    """Ranked paths of memories bridging FROM to TO."""
    out = api_call(lambda: client().plan(source, target, namespace=namespace, max_hops=max_hops))
    if json_out:
        print_json(out)
        return
    if not out["paths"]:
        console.print(f"no path within {max_hops} hops ({out['nodes']} memories considered)")
    for rank, p in enumerate(out["paths"], 1):
        table(f"path {rank}: cost {p['cost']:.3f}, {p['hops']} hop(s)", ["step", "via", "memory", "id"],
              [[i, s["via"], s["content"], s["id"]] for i, s in enumerate(p["memories"])])
