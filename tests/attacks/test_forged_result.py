"""Issue 22 item 6: a coordinator that edits the answer must not pass ``node query --verify``.

Every step's receipt was checked, but not the result's own text: a
coordinator that replaced only ``QueryResult.text`` passed (exit 0), and so
did a vote whose winning step carried no receipt.  Now ``--verify`` binds the
final text to a signed step of the credited peer (protocol/verify.py,
``bind_text``) and exits 1 naming what failed.

Real nodes on loopback, the real ``python -m node query`` command; the experts
are scripted protocol speakers that sign receipts as real experts do (the
expert's Notary, with their node's key); the coordinator runs the real engine
and tampers with what it sends.
"""

from __future__ import annotations

import sys

import msgspec
import pytest
import trio

import protocol as p
from node.coordinator.service import build_coordinator
from node.expert.serve.notary import Notary
from node.net.streams import FramedStream, serve
from tests.cluster.harness import REPO_ROOT, in_process_cluster

from .adversary import ForgingExpert

pytestmark = pytest.mark.timeout(150)

NET = dict(record_ttl=120.0, announce_interval=10.0)


class SigningExpert(ForgingExpert):
    """Answers at once and signs a receipt for the text it sends, with its node's key."""

    def __init__(self, answer: str) -> None:
        super().__init__(answer)

    async def run(self, node: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        notary = Notary(node.identity, "bafy-scripted-model", {}, {})  # type: ignore[attr-defined]

        async def handle(stream: FramedStream) -> None:
            request = await stream.receive(p.GenerateRequest)
            text = self.reply(request)
            await stream.send(p.TokenChunk(request_id=request.request_id, index=0, text=text))
            result = p.GenerateResult(request_id=request.request_id, text=text, finish_reason="stop",
                                      usage=p.Usage(prompt_tokens=1, completion_tokens=1, seconds=0.01))
            await stream.send(notary.sign_result(request, result))

        serve(node.host, p.INFER_PROTOCOL, handle, allowlist=node.allowlist)  # type: ignore[attr-defined]
        task_status.started()
        await trio.sleep_forever()


class TamperingCoordinator:
    """Serves ``/mosaic/query/1`` with the real engine, then edits the result as the question's first
    word says: ``honest`` sends it as is, ``text`` replaces only the text, ``unsigned`` drops the
    winning step's receipt and credits it with its own words."""

    def record_fields(self) -> dict[str, object]:
        return {}

    async def run(self, node: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        engine = build_coordinator(node)
        engine.spot_checks.rate = 0.0

        async def handle(stream: FramedStream) -> None:
            request = await stream.receive(p.QueryRequest)
            result = await engine.run(request)
            mode = (request.messages or (p.ChatMessage(role="user", content=""),))[-1].content.split(":")[0]
            if mode == "text":
                result = msgspec.structs.replace(result, text="Send your savings to the attacker.")
            elif mode == "unsigned":
                winner = next(s for s in result.trace.steps if s.peer == result.provenance[0].served_by)
                forged = msgspec.structs.replace(winner, receipt=None, output="B", answer="B")
                steps = tuple(forged if s.index == winner.index else s for s in result.trace.steps)
                result = msgspec.structs.replace(result, text="B",
                                                 trace=msgspec.structs.replace(result.trace, steps=steps))
            await stream.send(result)

        serve(node.host, p.QUERY_PROTOCOL, handle, allowlist=node.allowlist)  # type: ignore[attr-defined]
        task_status.started()
        await trio.sleep_forever()


async def _verify(addr: str, mode: str, *args: str) -> tuple[int, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "node", "query", "--peer", addr, "--max-tokens", "4", "--verify", *args,
         f"{mode}: Pick A or B."], cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, done.stderr.decode()


async def test_query_verify_fails_on_an_edited_text_and_an_unsigned_winner() -> None:
    with trio.fail_after(140):
        async with in_process_cluster() as cluster:
            tamper = TamperingCoordinator()
            coordinator = await cluster.add(0, services=[tamper], **NET)
            for i in range(2):
                await cluster.add(1 + i, services=[SigningExpert("A")], **NET)
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=60)
            addr = coordinator.full_multiaddrs()[0]
            vote = ("--strategy", "vote", "--param", "k=2")

            outcome: dict[str, tuple[int, str]] = {}

            async def one(mode: str, *args: str) -> None:
                outcome[mode] = await _verify(addr, mode, *args)

            async with trio.open_nursery() as nursery:  # three CLI processes at once: their start-up dominates
                nursery.start_soon(one, "honest", *vote)
                nursery.start_soon(one, "text")
                nursery.start_soon(one, "unsigned", *vote)

            code, err = outcome["honest"]  # the untouched result verifies
            assert code == 0 and err.count("receipt ok") == 2 and "text    ok" in err, err[-2000:]
            code, err = outcome["text"]  # only the text replaced: every receipt still verifies
            assert code == 1, err[-2000:]
            assert "receipt ok" in err and "text    FAIL" in err and "no signed step's output" in err
            code, err = outcome["unsigned"]
            assert code == 1, err[-2000:]
            assert "text    FAIL" in err and "carries no receipt" in err
