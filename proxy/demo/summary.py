"""The demo's closing report: plain text for people, or JSON (`--json`) for scripts and tests."""

from __future__ import annotations

from collections import Counter
from typing import Any

from proxy.demo.command import DEMO_KEY  # the only key ever printed in a link: config.yaml publishes it
from proxy.demo.driver import DemoResult
from proxy.demo.tally import Tally


def as_json(result: DemoResult) -> dict[str, Any]:
    t, sink = result.tally, result.sink
    return {
        "tag": result.tag, "seed": result.options.seed, "seconds": round(result.seconds, 1),
        "interrupted": result.interrupted,
        "calls": {"total": t.calls, "answered": t.answered, "refused": dict(t.refused), "failed": t.failed,
                  "retries": t.retries, "clamped": t.clamped, "warned": t.warned},
        "spend_usd": str(t.spend), "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
        "issues": {"planned": len(result.plan.issues), "completed": t.issues_completed, "open": t.issues_open,
                   "not_started": t.issues_not_started, "reworks": t.reworks},
        "runs": dict(t.runs), "deployments": t.deployments, "incidents": t.incidents,
        "events": {"posted": sink.posted, "accepted": sink.accepted, "duplicates": sink.duplicates,
                   "refused": sink.refused, "errors": sink.errors},
        "refusals": [{"code": n.code, "budget": n.budget or _approval_budget(result, n.approval_id),
                      "window": n.window, "approval_id": n.approval_id, "issue": n.issue, "run": n.run,
                      "station": n.station, "spent_before_usd": str(n.spent_before), "message": n.message}
                     for n in t.notes],
        "errors": t.errors,
    }


def as_text(result: DemoResult) -> str:
    t, o = result.tally, result.options
    projects = len({i.project.name for i in result.plan.issues})
    head = (f"spendgate demo {result.tag} (seed {o.seed}): {len(result.plan.issues)} issues in {projects} "
            f"projects, {o.agents} agents at once, {_duration(result.seconds)}")
    lines = [head + (", INTERRUPTED" if result.interrupted else ""), _calls(t),
             f"  spend      ${t.spend} as metered by spendgate ({t.input_tokens:,} tokens in, "
             f"{t.output_tokens:,} out)",
             _issues(t),
             f"  runs       {sum(t.runs.values())} pipeline runs: {_counts(t.runs)}; {t.deployments} deployments, "
             f"{t.incidents} incident(s) opened and rolled back",
             _events(result)]
    lines += _refusal_lines(result)
    if t.errors:
        lines.append(f"  errors     {t.failed} calls failed, e.g. {t.errors[0]}")
    lines.append(f"  dashboard  {_dashboard(o.url, o.key)}")
    return "\n".join(lines)


def _calls(t: Tally) -> str:
    line = (f"  calls      {t.calls}: {t.answered} answered, {t.refusals} refused ({_counts(t.refused)}), "
            f"{t.failed} failed; {t.retries} retries")
    if t.clamped:
        line += f", {t.clamped} with max_tokens clamped by a budget"
    if t.warned:
        line += f", {t.warned} with a budget warning"
    return line


def _issues(t: Tally) -> str:
    why = [f"{issue}: {reason}" for issue, reason in sorted(t.issues_open.items()) if reason != "interrupted"]
    if interrupted := len(t.issues_open) - len(why):
        why.append(f"{interrupted} interrupted")
    line = f"  issues     {t.issues_completed} completed, {len(t.issues_open)} open"
    line += f" ({'; '.join(why)})" if why else ""
    line += f", {t.issues_not_started} not started" if t.issues_not_started else ""
    return line + f"; {t.reworks} sent back for rework"


def _events(result: DemoResult) -> str:
    t, sink = result.tally, result.sink
    line = f"  events     {sink.posted} posted: {sink.accepted} accepted, {sink.duplicates} duplicates"
    if sink.refused:
        line += f", {sink.refused} REFUSED ({sink.errors[0]})"
    return line + (f"; compute: {t.session_ms / 3.6e6:.1f} h of agent sessions, "
                   f"{t.execution_ms / 3.6e6:.1f} h of executions")


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counter.items())) or "none"


def _refusal_lines(result: DemoResult) -> list[str]:
    o = result.options
    lines = ["  refusals   none: no budget refused or held a call"] if not result.tally.notes else ["  refusals"]
    for n in result.tally.notes:
        if n.code == "approval_required" and n.approval_id:
            budget = _approval_budget(result, n.approval_id) or "a budget"
            held = result.tally.held[n.approval_id]
            lines += [
                f"    402 approval_required: {budget} held {held} call(s) at {n.station}; "
                f"approval {n.approval_id} is pending",
                f"      approve it in the dashboard ({_dashboard(o.url, o.key)}, Pending approvals, Approve)",
                f"      or: curl -X POST {o.url}/api/approvals/{n.approval_id}/approve "
                "-H \"Authorization: Bearer $SPENDGATE_KEY\"",
            ]
        elif n.window == "run":
            lines.append(f"    402 {n.code}: {n.budget} stopped run {n.run} ({n.issue} at {n.station}, after "
                         f"${n.spent_before:.6f} there); the run was cancelled, the other runs went on")
        else:
            lines += [f"    402 {n.code}: {n.budget or 'a budget'} ({n.window or '?'} window) stopped "
                      f"{n.issue} at {n.station}: {n.message}",
                      f"      raise it in config.yaml or with PUT {o.url}/api/budgets/{n.budget}/limit "
                      "{\"limit_usd\": ...}"]
    if not result.interrupted and not any(n.window == "run" for n in result.tally.notes):
        lines.append("    (no run hit a cap: config.yaml's per-run-ceiling, a `run: \"*\"` budget with on_exceed: "
                     "block, stops the runaway run)")
    return lines


def _approval_budget(result: DemoResult, approval_id: str | None) -> str | None:
    row = result.approvals.get(approval_id or "")
    return str(row["budget"]) if row else None


def _dashboard(url: str, key: str) -> str:
    return f"{url}/dashboard#key={key}" if key == DEMO_KEY else f"{url}/dashboard (sign in with your key)"


def _duration(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 60}:{whole % 60:02d}"
