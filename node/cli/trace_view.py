"""A trace as a readable tree (``node query --trace``): rounds, then each step with who did what."""

from __future__ import annotations

from itertools import groupby

from protocol import Trace, TraceStep, trace_digest


def _step(step: TraceStep) -> list[str]:
    who = f"{step.expert or '?'} [{step.peer[-8:]}]" + (f" +{step.adapter}" if step.adapter else "")
    head = f"#{step.index} {step.role:<11} {who}  {step.call} {step.status}  {step.seconds:.2f}s"
    if step.tokens:
        head += f" {step.tokens} tok"
    extras = []
    if step.answer is not None:
        extras.append(f"answer={step.answer!r}")
    if step.votes is not None:
        extras.append(f"votes={step.votes}")
    if step.score is not None:
        extras.append(f"score={step.score:g}")
    if step.continues is not None:
        extras.append(f"continues #{step.continues}")
    if step.receipt is not None:
        extras.append("receipt")
    lines = [head + ("  " + " ".join(extras) if extras else "")]
    if step.error:
        lines.append(f"    error: {step.error}")
    output = " ".join(step.output.split())
    if output:
        lines.append(f"    > {output[:160]}{'...' if len(output) > 160 else ''}")
    return lines


def render(trace: Trace) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(trace.params.items()))
    lines = [f"trace {trace.request_id} strategy={trace.strategy}" + (f" ({params})" if params else "")]
    for rnd, steps in groupby(sorted(trace.steps, key=lambda s: (s.round, s.index)), key=lambda s: s.round):
        lines.append(f"├─ round {rnd}")
        for step in steps:
            body = _step(step)
            lines.append("│  ├─ " + body[0])
            lines.extend("│  │  " + extra for extra in body[1:])
    if trace.dropped_steps:
        lines.append(f"├─ ({trace.dropped_steps} more steps not kept)")
    lines.append(f"└─ decision: {trace.decision}")
    lines.append(f"   digest {trace_digest(trace)}")
    return "\n".join(lines)
