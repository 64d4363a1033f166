"""The README's tour works when pasted: its commands, run as written against a fresh `soma serve`.

The bash and python blocks of "A short tour" and "Your first agent in 5 minutes" are read from
README.md at test time and run in order in one bash session, so shell variables and functions
carry over from block to block as they do in a user's terminal. The only rewriting is plumbing:
the server's address, the path of the virtualenv, and SOMA_HOME/SOMA_URL in the environment.
A block the README marks with `<!-- not run by tests/test_readme.py: why -->` on the line before
its fence is shown to readers but not run (it needs another server or a key we do not have).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from somastack.bench.server import served

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## A short tour", "## Your first agent in 5 minutes")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
NOT_RUN = "<!-- not run by tests/test_readme.py"
DEFAULT_ADDRESSES = ("127.0.0.1:8080", "localhost:8080")
MARK = re.compile(r"^@@readme block (\d+)@@\n", re.M)


@dataclass(frozen=True)
class Block:
    lang: str  # "bash" | "python"
    source: str


def tour_blocks(readme: str) -> list[Block]:
    """The runnable bash and python blocks of the tour's sections, in README order."""
    blocks: list[Block] = []
    for heading in SECTIONS:
        start = readme.index(f"\n{heading}\n")
        end = readme.find("\n## ", start + 1)
        section = readme[start:end if end != -1 else len(readme)]
        for m in FENCE.finditer(section):
            line_before = section[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            if m[1] in ("bash", "python") and not line_before.startswith(NOT_RUN):
                blocks.append(Block(m[1], m[2]))
    return blocks


def plumbed(source: str, url: str, venv_bin: Path) -> str:
    """The block pointed at the test server and the running virtualenv; nothing else changes."""
    for default in DEFAULT_ADDRESSES:
        source = source.replace(default, url.removeprefix("http://"))
    return source.replace(".venv/bin/", f"{venv_bin}/")


def session_script(blocks: list[Block], url: str, venv_bin: Path) -> str:
    """One bash script: each block after a marker line, python blocks fed to the venv's python."""
    lines = ["set -euo pipefail"]
    for i, block in enumerate(blocks):
        lines.append(f"printf '\\n@@readme block {i}@@\\n'")  # curl's answers end without \n
        source = plumbed(block.source, url, venv_bin).rstrip("\n")
        if block.lang == "python":
            lines += [f"{venv_bin}/python - <<'README_PY'", source, "README_PY"]
        else:
            lines.append(source)
    return "\n".join(lines) + "\n"


def json_documents(text: str) -> list[Any]:
    """Every JSON object in text, in order (curl's answers run together without newlines)."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    i = text.find("{")
    while i != -1:
        try:
            doc, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        docs.append(doc)
        i = text.find("{", end)
    return docs


@dataclass(frozen=True)
class Tour:
    blocks: list[Block]
    outputs: list[str]  # each block's stdout

    def output_of(self, needle: str) -> str:
        """What the first block whose source contains needle printed."""
        return next(out for b, out in zip(self.blocks, self.outputs, strict=True)
                    if needle in b.source)


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Tour:
    """The tour, pasted into one bash session (stdin closed, as after Ctrl-D) on a fresh server."""
    tmp = tmp_path_factory.mktemp("readme")
    work = tmp / "work"
    work.mkdir()
    blocks = tour_blocks(README.read_text())
    venv_bin = Path(sys.executable).parent
    with served(tmp / "soma-home") as srv:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOMA_")}
        env |= {"SOMA_HOME": str(tmp / "soma-home"), "SOMA_URL": srv.url}
        script = tmp / "tour.sh"
        script.write_text(session_script(blocks, srv.url, venv_bin))
        run = subprocess.run(["bash", str(script)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n--- stderr ---\n{run.stderr[-3000:]}"
    parts = MARK.split(run.stdout)
    assert [int(n) for n in parts[1::2]] == list(range(len(blocks)))
    return Tour(blocks, parts[2::2])


def test_every_block_ran_and_no_call_was_refused(tour: Tour) -> None:
    assert {b.lang for b in tour.blocks} == {"bash", "python"}
    problems = [d for out in tour.outputs for d in json_documents(out)
                if str(d.get("type", "")).startswith("urn:somastack:problem:")]
    assert [p["field"] for p in problems] == ["content"]  # only the tour's deliberate 422


def test_curl_remember_recall_and_a_problem(tour: Tour) -> None:
    created, recalled, invalid = json_documents(tour.output_of("/v1/memory/remember"))
    assert created["status"] == "created"
    assert recalled["evidence"][0]["memory"]["content"] == "Ada prefers green tea in the morning"
    assert invalid["status"] == 422 and invalid["field"] == "content"
    assert invalid["type"] == "urn:somastack:problem:invalid-input"


def test_cli_recall_and_forget(tour: Tour) -> None:
    cli = tour.output_of('soma remember "Bob')
    recalled = next(d for d in json_documents(cli) if "evidence" in d)
    assert recalled["evidence"][0]["memory"]["content"] == "Bob is allergic to peanuts"
    assert re.search(r"^deleted 1 \(receipt [0-9a-f-]{36}\)$", cli, re.M), cli


def test_python_client_recalls_carol(tour: Tour) -> None:
    first = tour.output_of("soma.link(").splitlines()[0]
    assert re.fullmatch(r"-?\d+\.\d+ Carol moved to Lisbon in May 2023", first), first


def test_agent_turn(tour: Tour) -> None:
    assert re.search(r"^persona helper [0-9a-f]{64}$", tour.output_of("soma persona create"),
                     re.M)
    turn = json.loads(tour.output_of("soma turn "))
    assert turn["error"] is None and turn["answer"]
    kinds = [e["type"] for e in turn["events"]]
    assert {"recall", "plan", "answer"} <= set(kinds) and kinds[-1] == "usage"
    assert turn["events"][0]["data"]["evidence"][0]["content"] == \
        "Ada ordered 3 boxes of green tea at 12 euros a box"
    assert turn["usage"]["tokens"] > 0


def test_the_same_request_gets_the_same_answer(tour: Tour) -> None:
    """The CLI turn and the HTTP turn ask the same of the same persona: at temperature 0 with a
    fixed seed (and tool output that names no random directory) the answers are the same."""
    cli = json.loads(tour.output_of("soma turn "))
    events = [d for d in json_documents(tour.output_of("/v1/session/mint")) if "type" in d]
    final = next(e for e in events if e["type"] == "answer" and e["data"].get("final"))
    usage = next(e for e in events if e["type"] == "usage")
    assert final["data"]["text"] == cli["answer"]
    assert usage["data"]["tokens"] == cli["usage"]["tokens"]


def test_http_turn_resume_and_replay(tour: Tour) -> None:
    streamed = tour.output_of("/v1/session/mint")
    assert "event: recall" in streamed and "event: usage" in streamed
    resumed = tour.output_of("Last-Event-ID")
    seqs = [int(n) for n in re.findall(r"^id: turn_\w+:(\d+)$", resumed, re.M)]
    assert seqs[0] == 6 and seqs == list(range(6, 6 + len(seqs)))  # the rest, after :5
    stored = next(d for d in json_documents(resumed) if "status" in d)
    assert stored["status"] == "done" and len(stored["events"]) == seqs[-1]


def test_python_turn_with_a_client_named_call(tour: Tour) -> None:
    lines = tour.output_of("c.mint_session(").splitlines()
    assert lines[0] == "tool: 36" and lines[1].startswith("answer: ")
    assert re.fullmatch(r"used: \d+ tokens, \d+\.\d+ cents", lines[-1]), lines
