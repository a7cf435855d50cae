"""What the Servers tab shows: the servers' live state, and how to call a ready one."""

from __future__ import annotations

import html
import time

from ..engine.thread import EngineStatus
from ..models.fit import gb
from ..serving.distributed_ranks import RankFacts
from ..serving.model_copy import COPIED, COPYING, CopyStatus
from ..serving.supervisor import READY, STARTING, ServerStatus, Usage

STATE_LABELS = {"starting": "◌ starting", "ready": "● ready", "not answering": "⚠ not answering",
                "stopping": "◌ stopping", "stopped": "○ stopped", "failed": "✗ failed"}


def uptime(seconds: float) -> str:
    """"42 s", "5 min", "3 h 20 min"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def servers_html(watched: list[tuple[ServerStatus, Usage | None]], ranks: dict[str, list[RankFacts]] | None = None,
                 now: float | None = None) -> str:
    """One block per server: state (with the time left to become ready), model, URL, uptime, pid, CPU, memory;
    for a distributed server, a row per rank."""
    if not watched:
        return "<p class='servers-empty'>No server runs. Fill in a profile on the left and press Start.</p>"
    now = now or time.time()
    blocks = []
    for status, usage in watched:
        state = STATE_LABELS.get(status.state, status.state)
        if status.state == STARTING:
            state += f" · ready check, {max(0, status.deadline - now):.0f} s left"
        facts = [f"<code>{html.escape(status.url)}</code>" if status.state == READY else html.escape(status.url)]
        if status.running:
            facts.append(f"up {uptime(now - status.started_at)}")
            facts.append(f"pid {status.pid}")
        if usage is not None:
            facts.append(f"CPU {usage.cpu_percent:.0f} %")
            facts.append(f"memory {gb(usage.rss_bytes)}")
        if status.exit_code is not None and not status.running:
            facts.append(f"exit code {status.exit_code}")
        message = f"<div class='server-message'>{html.escape(status.message)}</div>" if status.message else ""
        blocks.append(
            f"<div class='server {status.state}' data-profile='{html.escape(status.profile_id)}'>"
            f"<div class='server-head'><b>{html.escape(status.name)}</b> <span class='server-state'>{state}</span>"
            f"</div><div class='server-facts'>{html.escape(status.kind)} · {html.escape(status.model)}</div>"
            f"<div class='server-facts'>{' · '.join(facts)}</div>{message}"
            f"{ranks_html((ranks or {}).get(status.profile_id, []), status.running)}</div>")
    return "".join(blocks)


def rank_state(facts: RankFacts, running: bool) -> str:
    """ps's state in words ("working", "waiting", "stopped: not answering", "gone")."""
    if facts.gone:
        return "gone"
    if facts.pid is None:
        return f"host did not answer ({facts.state})" if facts.state else ("starting…" if running else "—")
    return {"R": "working", "S": "waiting", "D": "waiting on the disk", "T": "stopped: not answering",
            "Z": "ended"}.get(facts.state[:1], facts.state)


def ranks_html(ranks: list[RankFacts], running: bool) -> str:
    """A distributed server's ranks: host, pid, state, CPU, memory, and each one's own last log lines."""
    if not ranks:
        return "<div class='server-facts'>Asking the hosts about the ranks…</div>" if running else ""
    rows = []
    for facts in ranks:
        tail = facts.log_tail.splitlines()
        last = html.escape(tail[-1][:120]) if tail else ""
        detail = (f"<details><summary>{last}</summary><pre>{html.escape(facts.log_tail)}</pre></details>"
                  if len(tail) > 1 else last)
        usage = (f"<td>{facts.cpu_percent:.0f} %</td><td>{gb(facts.rss_bytes)}</td>" if facts.pid and not facts.gone
                 else "<td></td><td></td>")
        rows.append(f"<tr class='rank {'stuck' if facts.stopped else ''}'><td>{facts.rank}</td>"
                    f"<td>{html.escape(facts.host)}</td><td>{facts.pid or ''}</td>"
                    f"<td>{html.escape(rank_state(facts, running))}</td>{usage}<td>{detail}</td></tr>")
    return ("<table class='server-ranks'><thead><tr><th>Rank</th><th>Host</th><th>pid</th><th>State</th>"
            f"<th>CPU</th><th>Memory</th><th>Last lines</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def copy_markdown(status: CopyStatus | None) -> str:
    """A model copy's progress per receiving host while it runs, then how it ended."""
    if status is None:
        return ""
    plan = status.plan
    if status.state != COPYING:
        took = f" ({uptime(status.ended_at - status.started_at)})" if status.ended_at else ""
        head = "**Copied.**" if status.state == COPIED else f"**Copy {status.state}{took}.**"
        return f"{head} {status.message}"
    rows = [f"**Copying** `{plan.root}` from {plan.source}, {gb(plan.total_bytes)} to each host "
            f"({status.fraction:.0%}, {uptime(time.time() - status.started_at)}):"]
    rows += [f"- {host}: {gb(status.landed.get(host, 0))} of {gb(plan.total_bytes)}" for host in plan.targets]
    return "\n".join(rows)


def snippets(status: ServerStatus | None, has_key: bool) -> str:
    """"Copy as curl" and "copy as Python (openai)" for a ready server (Gradio's code blocks have a copy button)."""
    if status is None or status.state != READY:
        return "*When the server is ready, how to call it from other programs appears here.*"
    model = "default_model" if status.kind == "text" else status.model
    auth = ' -H "Authorization: Bearer $API_KEY"' if has_key else ""
    key = 'os.environ["API_KEY"]' if has_key else '"not-needed"'
    return (
        f"**{status.url}** — OpenAI-compatible.\n\n"
        "```bash\n"
        f"curl {status.url}/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
        f"  -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n"
        "```\n\n"
        "```python\n"
        + ("import os\n" if has_key else "")
        + "from openai import OpenAI\n\n"
        f"client = OpenAI(base_url=\"{status.url}\", api_key={key})\n"
        f"reply = client.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", "
        "\"content\": \"Hello\"}])\n"
        "print(reply.choices[0].message.content)\n"
        "```"
    )


def engine_markdown(status: EngineStatus, now: float | None = None) -> str:
    """What the in-process engine holds: each loaded model (kind, weights, caches, context in use, last use,
    pinned), the memory for models against its budget, MLX's memory now and at the last reply's peak."""
    now = time.time() if now is None else now
    doing = {"loading": f"Loading {status.model_name or 'a model'}…", "error": f"Failed: {status.message}"}
    lines = [f"**Engine:** {doing[status.state]}"] if status.state in doing else []
    if status.state == "ready" and status.message:
        lines.append(status.message)
    if not status.models:
        if not lines:
            lines.append("**Engine:** no model loaded" + (f" ({status.message})" if status.message else ""))
        return "\n\n".join(lines)
    held = sum(m.weight_bytes + m.cache_bytes for m in status.models)
    budget = f" of {gb(status.memory_budget)}" if status.memory_budget else ""
    count = f"{len(status.models)} model{'s' if len(status.models) != 1 else ''}"
    busy = " · answering now" if status.generating else ""
    lines.insert(0, f"**Engine:** {count} in memory, {gb(held)}{budget} for models{busy} · MLX memory "
                    f"{gb(status.memory_bytes)}, peak {gb(status.peak_bytes)} · prompt caches on disk for "
                    f"{status.saved_conversations} conversation{'s' if status.saved_conversations != 1 else ''} "
                    f"({gb(status.saved_bytes)})")
    rows = ["| Model | Kind | Weights | Prompt caches | Context in use | Last use | Unloaded after |",
            "|---|---|---|---|---|---|---|"]
    for m in status.models:
        name = m.name.replace("|", "\\|") + (" · **pinned**" if m.pinned else "")
        caches = f"{m.conversations} ({gb(m.cache_bytes)})" if m.conversations else "none"
        context = f"{m.context_tokens:,} tokens" if m.context_tokens else "—"
        idle = status.idle_unload_s if m.idle_unload_s is None else m.idle_unload_s
        unloads = "never (pinned)" if m.pinned else f"{uptime(idle)} idle" if idle else "never"
        if m.idle_unload_s is not None and not m.pinned:
            unloads += " (its client's ttl)"
        rows.append(f"| {name} | {'vision' if m.vision else 'text'} | {gb(m.weight_bytes)} | {caches} | "
                    f"{context} | {uptime(now - m.last_used)} ago | {unloads} |")
    return "\n\n".join([*lines, "\n".join(rows)])
