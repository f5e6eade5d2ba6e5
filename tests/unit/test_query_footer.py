"""`node query`'s footer on stderr: the author with the totals once, then each contributor's role."""

from __future__ import annotations

import protocol as p
from node.cli.query import footer


def test_each_contributor_is_one_distinct_line_with_its_role() -> None:
    peer = "12D3KooWExamplePeer"
    provenance = tuple(p.Provenance(served_by=peer, expert="mosaic-node", model="Qwen2.5-Coder-1.5B-Instruct", role=role)
                       for role in ("answer", "knowledge", "proposer"))
    result = p.QueryResult(request_id="r", text="42", finish_reason="stop", strategy="knowledge",
                           usage=p.Usage(prompt_tokens=10, completion_tokens=57, seconds=4.65), provenance=provenance)
    lines = footer(result)
    assert lines[0] == f"-- served by {peer} (mosaic-node: Qwen2.5-Coder-1.5B-Instruct); 57 tokens in 4.65 s, finish=stop"
    assert lines[1:] == [f"--   {role} by {peer} (mosaic-node: Qwen2.5-Coder-1.5B-Instruct)"
                         for role in ("knowledge", "proposer")]
    assert len(set(lines)) == len(lines)
