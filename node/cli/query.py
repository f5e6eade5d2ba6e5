"""`python -m node query --peer MULTIADDR "question"`: ask any peer, stream the answer to the terminal.

The CLI runs a bare libp2p client host (fresh identity, loopback listen) --
not a full node: the peer it dials coordinates the query.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from . import EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE
from .choices import DEFAULT_MAX_TOKENS, STRATEGY_NAMES

if TYPE_CHECKING:
    from protocol import QueryResult


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("query", help="ask a question to the network through any peer",
                       description="Send a query over /mosaic/query/1 and stream the answer.")
    p.add_argument("question", help="the question (a user chat message; see --raw)")
    p.add_argument("--peer", required=True, metavar="MULTIADDR", help="any peer: /ip4/.../tcp/.../p2p/<peer id>")
    p.add_argument("--strategy", default="route", metavar="NAME",
                   help="collaboration strategy (default: route): " + ", ".join(STRATEGY_NAMES)
                   + " (docs/collaboration.md)")
    p.add_argument("--tags", default="", help="comma-separated capability tags, e.g. math,proof")
    p.add_argument("--model", default=None, help="pin an expert (name, name/adapter or peer id)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"answer length cap (default {DEFAULT_MAX_TOKENS}, as the HTTP API and the dashboard)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: greedy for a question, 0.7 for open-ended writing, "
                        "as the HTTP API does)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: as the HTTP API)")
    p.add_argument("--system", default=None, help="an optional system message")
    p.add_argument("--raw", action="store_true", help="send the question as a raw prompt, no chat template")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole answer")
    p.add_argument("--json", action="store_true", help="print the final result (with provenance) as JSON")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a strategy parameter, e.g. --param k=4 (repeatable; see docs/collaboration.md)")
    p.add_argument("--trace", action="store_true", help="print the trace (who did what) as a tree on stderr")
    p.add_argument("--verify", action="store_true",
                   help="check every expert's signed receipt in the trace against its peer key, and that "
                        "the final text is a signed step's output (exit 1 when either fails)")
    p.set_defaults(run=run)


def parse_params(pairs: list[str]) -> dict[str, object]:
    """``["k=4", "final=vote", "semantic=false"]`` -> ``{"k": 4, "final": "vote", "semantic": False}``."""
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        value: object = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    pass
        params[key.strip()] = value
    return params


def build_request(args: argparse.Namespace):
    """The QueryRequest for the CLI arguments; raises ``protocol.ProtocolError`` when out of range."""
    import uuid

    import protocol
    from node.coordinator.decoding import fill_defaults

    temperature, top_p = fill_defaults(args.question, args.temperature, args.top_p)
    fields: dict[str, object] = {
        "v": protocol.PROTOCOL_VERSION, "t": "query", "request_id": f"cli-{uuid.uuid4().hex[:20]}",
        "strategy": args.strategy, "tags": [t.strip() for t in args.tags.split(",") if t.strip()],
        "sampling": {"max_new_tokens": args.max_tokens, "temperature": temperature, "top_p": top_p},
        "timeout_s": args.timeout, "stream": True, "params": parse_params(args.param),
    }
    if args.model:
        fields["model"] = args.model
    if args.raw:
        fields["prompt"] = args.question
    else:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        fields["messages"] = messages + [{"role": "user", "content": args.question}]
    # Round-trip through the strict decoder: the CLI validates exactly as the remote peer will.
    import msgspec

    return protocol.decode(msgspec.msgpack.encode(fields), protocol.QueryRequest)


def run(args: argparse.Namespace) -> int:
    import protocol

    from .interrupt import run_one_shot

    try:
        request = build_request(args)
    except (protocol.ProtocolError, ValueError) as exc:
        print(f"error: invalid query: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run_one_shot(_main, args, request)


async def _main(args: argparse.Namespace, request) -> int:
    from contextlib import aclosing

    import msgspec
    import trio

    from node.coordinator.client import ask
    from node.coordinator.executor import QueryFailed
    from node.net.discovery import DialError, dial
    from node.net.host import build_host, listen_multiaddrs
    from node.net.keys import libp2p_key_pair
    from protocol import Identity, QueryChunk, QueryResult

    listen = ["/ip4/127.0.0.1/tcp/0"]
    host = build_host(libp2p_key_pair(Identity.generate()), listen)
    result = None
    async with host.run(listen_addrs=listen_multiaddrs(listen)):
        try:
            peer_id = await dial(host, args.peer)
            with trio.fail_after(args.timeout + 5):
                async with aclosing(ask(host, peer_id, request)) as events:
                    async for event in events:
                        if isinstance(event, QueryChunk) and not args.json:
                            sys.stdout.write(event.text)
                            sys.stdout.flush()
                        elif isinstance(event, QueryResult):
                            result = event
        except DialError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except QueryFailed as exc:
            print(f"\nerror: {exc.code}: {exc.message}", file=sys.stderr)
            # bad_request: the peer refused what we asked (unknown strategy, bad --param): bad input.
            return EXIT_USAGE if exc.code == "bad_request" else EXIT_FAILED
        except trio.TooSlowError:
            print(f"\nerror: no answer within {args.timeout:g} s", file=sys.stderr)
            return EXIT_FAILED
    if result is None:  # ask() ends with a result or raises; a peer that closes early is reported here
        print("\nerror: the peer closed the stream without a result", file=sys.stderr)
        return EXIT_FAILED
    if args.trace and result.trace is not None:
        from .trace_view import render

        print(render(result.trace), file=sys.stderr)
    author = result.provenance[0].served_by if result.provenance else None
    verified = verify_receipts(result.trace, result.text, author) if args.verify else True
    if args.json:
        print(msgspec.json.encode(msgspec.to_builtins(result)).decode())
    else:
        print()
        for line in footer(result):
            print(line, file=sys.stderr)
    return 0 if verified else EXIT_FAILED


def footer(result: QueryResult) -> list[str]:
    """Who answered (with the query's totals), then each other contributor with its role.

    Provenance has one entry per (peer, adapter, role): on a one-node network a knowledge query
    printed the same "served by" line three times (answer, knowledge card, plain answer)."""
    lines = []
    for index, prov in enumerate(result.provenance):
        who = f"{prov.served_by} ({prov.expert}: {prov.model}{f' + adapter {prov.adapter}' if prov.adapter else ''})"
        if index == 0:
            lines.append(f"-- served by {who}; {result.usage.completion_tokens} tokens in "
                         f"{result.usage.seconds:.2f} s, finish={result.finish_reason}")
        else:
            lines.append(f"--   {prov.role} by {who}")
    return lines


def verify_receipts(trace, text: str | None = None, author: str | None = None) -> bool:
    """Print one line per receipt check on stderr; True when every receipt verifies (and there is one)
    and, given the result's ``text``, that text is a signed step's output (by ``author``, when given)."""
    from protocol.verify import bind_text, check_trace

    checks = check_trace(trace) if trace is not None else []
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        print(f"receipt {mark} step {check.step} {check.peer[-8:]}: {check.detail}", file=sys.stderr)
    unsigned = [s.index for s in trace.steps if s.receipt is None and s.status == "ok"] if trace else []
    if unsigned:
        print(f"receipt none steps {unsigned}: no receipt (score / next-token calls are not signed)", file=sys.stderr)
    if not checks:
        print("receipt FAIL: the result carries no receipt to verify", file=sys.stderr)
    bound = True
    if text is not None and trace is not None:
        binding = bind_text(trace, text, author)
        bound = binding.ok
        print(f"text    {'ok  ' if bound else 'FAIL'} {binding.detail}", file=sys.stderr)
    return bool(checks) and all(c.ok for c in checks) and bound
