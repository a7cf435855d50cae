"""The plan of one model served by several ranks with MLX's own engine (`mlx.launch` running `mlx_lm.server`):
whether the model splits that way, and the memory each rank needs, decided before anything starts.

Tensor parallel (mlx-lm's default under `mlx.launch`) cuts every layer's attention and MLP across the ranks and
keeps the embeddings, the last norm and the head whole on each; pipeline parallel (`--pipeline`) gives each rank a
run of layers, rank 0 the last ones, every rank the embeddings and the head. Sizes come from the safetensors
headers, never from the weights.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from ..models.fit import OVERHEAD_BYTES, gb, kv_bytes, model_shape, text_config, tokens
from ..models.folders import read_config

log = logging.getLogger(__name__)

TENSOR, PIPELINE = "tensor", "pipeline"
LOCAL_HOST = "127.0.0.1"  # the one host `mlx.launch` starts a rank for on this machine, without ssh
LOCAL_HOSTS = (LOCAL_HOST, "localhost", "::1")  # read as LOCAL_HOST
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class RankShare:
    """What one rank holds."""

    rank: int
    host: str
    layers: tuple[int, int]  # [first, last) of the layers it runs (every layer, cut, for tensor parallel)
    weight_bytes: int
    kv_bytes: int

    @property
    def needed(self) -> int:
        return self.weight_bytes + self.kv_bytes + OVERHEAD_BYTES

    @property
    def summary(self) -> str:
        """"rank 1 on 10.0.0.2: layers 0–14, 2.1 GB weights + 0.5 GB context (+ 300 MB runtime) = 2.9 GB"."""
        first, last = self.layers
        return (f"rank {self.rank} on {self.host}: layers {first}–{last - 1}, {gb(self.weight_bytes)} weights + "
                f"{gb(self.kv_bytes)} context (+ {gb(OVERHEAD_BYTES)} runtime) = {gb(self.needed)}")


@dataclass(frozen=True)
class SplitPlan:
    """How a model splits over the hosts in a mode, or why it cannot."""

    mode: str
    hosts: tuple[str, ...]
    context: int
    problems: tuple[str, ...]  # sentences: why this cannot work (empty: it can)
    shares: tuple[RankShare, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_hosts(text: str) -> list[str]:
    """The hosts of a profile, one per rank: names or IPs one per line (or comma-separated), or a hostfile as
    `mlx.distributed_config` writes it (a JSON list of `{"ssh": …, "ips": […]}`). This machine's loopback names
    become 127.0.0.1, the one name `mlx.launch` starts a rank for without ssh."""
    return [entry["ssh"] for entry in ring_hostfile(text, resolve=False)]


def ring_hostfile(text: str, resolve: bool = True) -> list[dict]:
    """`mlx.launch`'s hostfile for the profile's hosts: each rank's ssh name and the addresses its ring listens on
    (a hostfile's own, else the host's address: the ring takes IPs, not names). Raises `ValueError` for hosts that
    cannot be read or (with `resolve`) a name that resolves to no address."""
    text = text.strip()
    if text.startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"The hostfile is not JSON: {exc}.") from exc
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("ssh"), str)
                                                    for e in entries):
            raise ValueError('A hostfile is a list of {"ssh": "host", "ips": ["address"]} entries.')
        if not all(_rdma_ok(e.get("rdma")) for e in entries):
            raise ValueError('An entry\'s "rdma" lists one RDMA device name (or a list of them) per host, null for '
                             "the host itself.")
        named = [(e["ssh"].strip(), [str(ip) for ip in e.get("ips") or []], e.get("rdma")) for e in entries]
    else:
        named = [(h.strip(), [], None) for line in text.splitlines() for h in line.split(",") if h.strip()]
    bad = [h for h, _, _ in named if not re.fullmatch(r"[A-Za-z0-9_.:@\[\]-]+", h)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a host name or address.")
    named = [(LOCAL_HOST if h in LOCAL_HOSTS else h, ips, rdma) for h, ips, rdma in named]
    return [{"ssh": h, "ips": ips or ([address(h)] if resolve else []), **({"rdma": rdma} if rdma is not None else {})}
            for h, ips, rdma in named]


def _rdma_ok(rdma: object) -> bool:
    """A hostfile entry's "rdma" as `mlx.distributed_config` writes it: absent, or a device (or devices) per host."""
    return rdma is None or isinstance(rdma, list) and all(
        d is None or isinstance(d, str) or isinstance(d, list) and all(isinstance(x, str) for x in d) for d in rdma)


def jaccl_problem(entries: list[dict]) -> str:
    """Why `mlx.launch` would refuse these hosts for JACCL, "" if it would not: each host's entry lists its RDMA
    device to every other host (null for itself), which `mlx.distributed_config --backend jaccl` writes."""
    count = len(entries)
    for i, entry in enumerate(entries):
        rdma = entry.get("rdma")
        if not isinstance(rdma, list) or len(rdma) != count:
            return ("JACCL needs the RDMA device between each pair of hosts (Thunderbolt 5 with RDMA enabled), "
                    "which a plain list of hosts does not say: run `mlx.distributed_config --backend jaccl --over "
                    "thunderbolt --hosts …` and paste the hostfile it writes into Hosts, or use the ring backend.")
        if rdma[i] is not None:
            return f"The hostfile lists an RDMA device from {entry['ssh']} to itself; that entry must be null."
        missing = [entries[j]["ssh"] for j in range(count) if j != i and not rdma[j]]
        if missing:
            return (f"The hostfile lists no RDMA device from {entry['ssh']} to {', '.join(missing)}: JACCL connects "
                    "every pair of hosts (cable them, then run `mlx.distributed_config --backend jaccl` again).")
    return ""


def address(host: str) -> str:
    """The IPv4 address of an ssh host name ("user@mac-b.local" → "192.168.1.12"); raises `ValueError`."""
    name = host.rsplit("@", 1)[-1].strip("[]")
    try:
        return socket.getaddrinfo(name, None, socket.AF_INET)[0][4][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"{host} does not resolve to an address ({exc}); write its IP instead.") from exc


def header_sizes(folder: Path) -> dict[str, int]:
    """Every tensor's bytes, by name, from the folder's safetensors headers."""
    sizes: dict[str, int] = {}
    for weights in sorted(Path(folder).glob("*.safetensors")):
        with open(weights, "rb") as f:
            length = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(length))
        sizes.update({name: entry["data_offsets"][1] - entry["data_offsets"][0]
                      for name, entry in header.items() if name != "__metadata__"})
    return sizes


def split_support(config: dict) -> tuple[bool, bool]:
    """(tensor parallel, pipeline parallel): what mlx-lm's classes for this architecture can do, read from the
    classes themselves (no model is built: that would make MLX arrays on a handler's thread). Pipeline support
    is mlx-lm's PipelineMixin on a class of the architecture's module, as its inner model has it."""
    from mlx_lm.models.pipeline import PipelineMixin
    from mlx_lm.utils import _get_classes

    model_class, _ = _get_classes(config)
    module = sys.modules[model_class.__module__]
    pipelined = any(isinstance(kind, type) and issubclass(kind, PipelineMixin) and kind is not PipelineMixin
                    for kind in vars(module).values())
    return hasattr(model_class, "shard"), pipelined


def pipeline_layers(layers: int, ranks: int) -> list[tuple[int, int]]:
    """Each rank's [first, last) layers as mlx-lm's PipelineMixin splits them: even, the low ranks one more,
    rank 0 the last layers."""
    base, extra = divmod(layers, ranks)
    counts = [base + (1 if r < extra else 0) for r in range(ranks)]
    return [(sum(counts[r + 1:]), sum(counts[r + 1:]) + counts[r]) for r in range(ranks)]


def plan_split(folder: str | Path, hosts: list[str], mode: str, context: int) -> SplitPlan:
    """Whether the model in `folder` splits over `hosts` (one rank each) in `mode`, and what each rank holds with
    a KV cache of `context` tokens."""
    folder = Path(folder)
    config = read_config(folder)
    text = text_config(config)
    name = folder.name
    ranks = len(hosts)
    problems: list[str] = []
    if ranks < 2:
        problems.append("A model served across machines needs two hosts or more (one per rank).")
    try:
        tensor_ok, pipeline_ok = split_support(config)
    except (ValueError, TypeError, KeyError) as exc:  # an architecture mlx-lm cannot build
        log.info("mlx-lm cannot build %s to see how it splits: %s", folder, exc)
        tensor_ok = pipeline_ok = False
        problems.append(f"mlx-lm cannot build {name} ({exc}), so it cannot be split.")
    heads = int(text.get("num_attention_heads") or 0)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    layers = int(text.get("num_hidden_layers") or 0)
    if mode == TENSOR and ranks >= 2 and not problems:
        problems += _tensor_problems(name, text, config, ranks, tensor_ok, heads, kv_heads)
    elif mode == PIPELINE and ranks >= 2 and not problems:
        if not pipeline_ok:
            problems.append(f"mlx-lm's {config.get('model_type')} model has no pipeline support; tensor "
                            "parallel may work instead.")
        if not (folder / INDEX).exists():
            problems.append(f"Pipeline parallel reads which layers each file holds from {INDEX}, which {name} "
                            "lacks; convert it with mlx_lm.convert, or use tensor parallel.")
        if layers < ranks:
            problems.append(f"{name} has {layers} layers, fewer than the {ranks} ranks.")
    elif mode not in (TENSOR, PIPELINE):
        problems.append(f"The mode must be {TENSOR} or {PIPELINE}, not {mode!r}.")
    shares = _shares(folder, config, hosts, mode, context, layers) if not problems else ()
    return SplitPlan(mode, tuple(hosts), context, tuple(problems), shares)


def _tensor_problems(name: str, text: dict, config: dict, ranks: int, supported: bool, heads: int,
                     kv_heads: int) -> list[str]:
    if not supported:
        return [f"mlx-lm's {config.get('model_type')} model cannot be split by tensor parallel (it has no "
                "shard()); pipeline parallel may work instead."]
    problems = []
    if heads % ranks or kv_heads % ranks:
        fits = [n for n in range(2, heads + 1) if heads % n == 0 and kv_heads % n == 0]
        problems.append(f"{name} has {heads} attention heads and {kv_heads} key-value heads: tensor parallel "
                        f"needs both to divide by the number of ranks, and {ranks} does not"
                        + (f" ({', '.join(map(str, fits))} would)." if fits else "."))
    intermediate = int(text.get("intermediate_size") or 0)
    if intermediate % ranks:
        problems.append(f"{name}'s MLP width ({intermediate}) does not divide by {ranks} ranks.")
    group = int((config.get("quantization") or {}).get("group_size") or 0)
    head_dim = int(text.get("head_dim") or (int(text.get("hidden_size") or 0) // max(heads, 1)))
    cut = [heads * head_dim // ranks, intermediate // ranks]
    if group and not problems and any(width % group for width in cut):
        problems.append(f"Each rank's share of a quantized layer ({' and '.join(map(str, cut))} columns) must be "
                        f"whole groups of {group}; with {ranks} ranks it is not.")
    return problems


def _shares(folder: Path, config: dict, hosts: list[str], mode: str, context: int, layers: int) -> tuple:
    """What each rank holds, from the weights' headers and the KV cache at `context` tokens."""
    sizes = header_sizes(folder)
    per_layer = [0] * layers
    shared = 0
    for name, size in sizes.items():
        found = LAYER.search(name)
        if found and int(found.group(1)) < layers:
            per_layer[int(found.group(1))] += size
        else:
            shared += size  # embeddings, the last norm, the head: whole on every rank
    shape = model_shape(config, sum(sizes.values()))
    kv_total = kv_bytes(shape, min(context, shape.context_length))
    ranks = len(hosts)
    if mode == TENSOR:
        return tuple(RankShare(r, host, (0, layers), shared + sum(per_layer) // ranks, kv_total // ranks)
                     for r, host in enumerate(hosts))
    return tuple(RankShare(r, host, (first, last), shared + sum(per_layer[first:last]),
                           kv_total * (last - first) // max(layers, 1))
                 for r, (host, (first, last)) in enumerate(zip(hosts, pipeline_layers(layers, ranks), strict=True)))


def describe(plan: SplitPlan) -> str:
    """The plan as sentences: why it cannot work, or each rank's share."""
    if not plan.ok:
        return " ".join(plan.problems)
    head = (f"{plan.mode.capitalize()} parallel over {len(plan.hosts)} ranks at a context of "
            f"{tokens(plan.context)} tokens:")
    return "\n".join([head, *(f"- {share.summary}" for share in plan.shares)])
