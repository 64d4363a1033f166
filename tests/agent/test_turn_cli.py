"""`soma persona create`, `soma turn --json`, `soma turns list|show` against the real server."""

from __future__ import annotations

import json

from tests.cli.test_cli import soma


def test_turn_json_and_turns_list_show(cli_env: dict[str, str]) -> None:
    soma(cli_env, "persona", "create", "--name", "clihelper", "--system-prompt",
         "Answer briefly.", "--tool", "python.eval", "--namespace", "cli")
    soma(cli_env, "remember", "The spare key is under the blue pot.", "--namespace", "cli")
    out = json.loads(soma(cli_env, "turn", "Where is the spare key?", "--persona", "clihelper",
                          "--tool", "python.eval", "--tool-choice", "none", "--max-tokens", "24",
                          "--json").stdout)
    kinds = [e["type"] for e in out["events"]]
    assert kinds[0] == "recall" and kinds[-1] == "usage" and out["error"] is None
    assert out["answer"] and out["usage"]["tokens"] > 0
    listed = json.loads(soma(cli_env, "turns", "list", "--json").stdout)
    assert [t["id"] for t in listed["items"]] == [out["turn_id"]]
    shown = json.loads(soma(cli_env, "turns", "show", out["turn_id"], "--json").stdout)
    assert shown["status"] == "done" and shown["events"] == out["events"]
    people = soma(cli_env, "turns", "show", out["turn_id"]).stdout  # the human rendering
    assert out["turn_id"] in people
    missing = soma(cli_env, "turns", "show", "turn_nope", ok=False)
    assert missing.returncode == 1 and "turn_id" in missing.stderr
