"""What the Models tab shows: result rows, a model's details and its fit, as text and markdown."""

from __future__ import annotations

import html

from ..controller.library import LocalEntry
from ..hub.downloads import DownloadProgress
from ..hub.search import HubModel, ModelDetails
from ..models.fit import Fit, gb, tokens
from ..models.gguf_sources import FoundGGUF

GGUF_COLUMNS = ["File", "App", "Size", "Import"]
LOCAL_COLUMNS = ["Model", "Where", "Size", "Last used", "Kind", "State", "Fits (weights)"]
STATES = {"queued": "Waiting", "downloading": "Downloading", "cancelling": "Stopping", "done": "Done",
          "failed": "Failed", "cancelled": "Cancelled", "interrupted": "Interrupted"}
COLUMNS = ["Model", "Downloads", "Likes", "Updated", "Size", "Bits", "Parameters", "Badges", "Fits (weights)"]
VERDICTS = {"fits": "✓ fits", "tight": "⚠ tight", "too large": "✗ too large"}


def count(value: int | None) -> str:
    """A parameter count as "135M" or "1.5B"; "—" when unknown."""
    if value is None:
        return "—"
    return f"{value / 1e9:.1f}B" if value >= 1e9 else f"{value / 1e6:.0f}M"


def file_size(size: int) -> str:
    """A file size in B, kB, MB or GB."""
    if size < 1000:
        return f"{size} B"
    return f"{size / 1e3:.0f} kB" if size < 1e6 else gb(size)


def result_rows(models: list[HubModel], fits: list[str]) -> list[list[str]]:
    """The search results table."""
    rows = []
    for model, fit in zip(models, fits, strict=True):
        badges = [b for b, on in (("vision", model.vision), ("gated", model.gated)) if on]
        rows.append([
            model.repo_id, f"{model.downloads:,}", f"{model.likes:,}",
            model.updated.strftime("%Y-%m-%d") if model.updated else "—",
            gb(model.weight_bytes) if model.weight_bytes is not None else "—",
            f"{model.bits}-bit" if model.bits else "—", count(model.parameters), " · ".join(badges) or "text",
            VERDICTS.get(fit, "—"),
        ])
    return rows


def details_markdown(details: ModelDetails) -> str:
    """The details panel: facts from the config, what it can do, the files."""
    config, shape = details.config, details.shape
    text = {**config, **(config.get("text_config") or {})}
    quantization = config.get("quantization") or {}
    abilities = ["vision" if details.vision else "text"]
    abilities += [name for name, on in (("tools", details.tools), ("thinking", details.thinking)) if on]
    facts = [
        ("Architecture", f"{', '.join(config.get('architectures') or []) or '—'} ({config.get('model_type', '—')})"),
        ("Context length", f"{shape.context_length:,} tokens"),
        ("Layers", f"{text.get('num_hidden_layers', '—')} ({shape.full_layers} full attention"
                   + (f", {shape.sliding_layers} sliding window of {shape.sliding_window:,}" if shape.sliding_layers
                      else "") + ")"),
        ("Attention heads", f"{text.get('num_attention_heads', '—')} ({shape.kv_heads} KV heads, head size "
                            f"{shape.head_dim})"),
        ("Quantization", f"{quantization['bits']}-bit, groups of {quantization.get('group_size', '—')}"
         if quantization.get("bits") else "none"),
        ("Can do", " · ".join(abilities)),
    ]
    needed = [f for f in details.files if f.needed]
    lines = [f"### {details.repo_id}", "", details.card_intro or "*No model card.*", "",
             "| | |", "|---|---|", *[f"| {name} | {value} |" for name, value in facts], "",
             f"**Files** — {len(needed)} of {len(details.files)} are downloaded, {gb(details.download_bytes)}",
             "", "| File | Size | |", "|---|---|---|"]
    lines += [f"| {f.path} | {file_size(f.size)} | {'✓' if f.needed else 'skipped'} |" for f in details.files]
    if details.gated:
        lines += ["", "⚠ This repository is gated: accept its terms on the Hub and set a token to download it."]
    return "\n".join(lines)


def fit_markdown(fit: Fit) -> str:
    """The verdict with its numbers, and the longest context that fits."""
    verdict = VERDICTS[fit.verdict]
    longest = (f"Up to {fit.largest_context:,} tokens of context fit." if fit.largest_context
               else "No context length fits comfortably.")
    return f"**{verdict}** at {tokens(fit.context)} tokens: {fit.summary}.\n\n{longest}"


def duration(seconds: float | None) -> str:
    """Time left as "42 s", "3 min" or "1 h 5 min"; "" when unknown."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def downloads_html(downloads: list[DownloadProgress]) -> str:
    """One line per download: name, state, a progress bar, bytes, speed and time left."""
    if not downloads:
        return "<p class='downloads-empty'>No downloads yet. Pick a model above and press Download.</p>"
    rows = []
    for d in downloads:
        numbers = f"{gb(d.done_bytes)} of {gb(d.total_bytes)}"
        if d.bytes_per_second:
            numbers += f" · {d.bytes_per_second / 1e6:.1f} MB/s"
        if left := duration(d.seconds_left):
            numbers += f" · {left} left"
        note = f"<div class='download-note'>{html.escape(d.message)}</div>" if d.message else ""
        rows.append(
            f"<div class='download {d.state}' data-repo='{html.escape(d.repo_id)}'>"
            f"<div class='download-head'><b>{html.escape(d.repo_id)}</b> <span>{STATES.get(d.state, d.state)}"
            f"</span></div><progress max='1000' value='{round(d.fraction * 1000)}'></progress>"
            f"<div class='download-numbers'>{numbers} ({d.fraction:.0%})</div>{note}</div>")
    return "".join(rows)


def local_rows(entries: list[LocalEntry]) -> list[list[str]]:
    """The table of models on this machine."""
    return [[e.name, e.where, gb(e.size_bytes), e.last_used.strftime("%Y-%m-%d %H:%M") if e.last_used else "—",
             "vision" if e.vision else "text", "ready" if e.complete else "incomplete", VERDICTS.get(e.fit, "—")]
            for e in entries]


def gguf_rows(found: list[FoundGGUF]) -> list[list[str]]:
    """The table of GGUF files from other apps."""
    return [[f.name, f.app, gb(f.size_bytes), "✓ can import" if not f.problem else f"✗ {f.problem}"] for f in found]
