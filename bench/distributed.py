"""One model served across ranks: decode speed and time to first token, one process vs ranks on this machine vs
ranks on three hosts reached over ssh.

Run `python bench/distributed.py` (as root for the hosts: they are network namespaces on a bridge, each with its
own sshd, as the tests make them). Every setup is the demo model behind `mlx_lm.server`, started by the app's
supervisor: one process (a text profile), three ranks of `mlx.launch` on 127.0.0.1 (tensor parallel), and three
ranks on three hosts over ssh. The demo model cannot be split over two ranks (9 attention heads, 3 key-value heads),
which the plan says in the table's note. Each setup is started, warmed up with one reply, then streams the same
greedy reply `--repeats` times, each with a prompt of its own so no prompt cache shortens the first token. Decode
counts the tokens the server reports (`usage.completion_tokens`) after the first, over the time from the first to
the last piece of text; time to first token is from the request to the first piece of text. The setups run one
after another in one run of the script (their ranks wait on each other at full CPU, so they would slow any other).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chat import PROMPT, decode_rate  # noqa: E402 - bench/chat.py, beside this file
from report import Row, demo_arguments, print_table  # noqa: E402
from servers import start_ready  # noqa: E402

from mlx_gradio.errors import ProfileInvalid  # noqa: E402
from mlx_gradio.models.demo import prepare_demo_model  # noqa: E402
from mlx_gradio.serving.profiles import DISTRIBUTED, ServerProfile, check_profile, new_profile  # noqa: E402
from mlx_gradio.serving.supervisor import Servers  # noqa: E402
from mlx_gradio.store import Store  # noqa: E402
from mlx_gradio.testing.namespaces import NamespacesUnavailable, make_hosts  # noqa: E402

TOKENS = 64


def timed_reply(url: str, run: int) -> tuple[float, float]:
    """(seconds to the first piece of text, decode tokens per second) of one streamed greedy reply."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=1800)
    asked = time.perf_counter()
    stamps, tokens = [], 0
    stream = client.chat.completions.create(
        model="default_model", stream=True, max_tokens=TOKENS, temperature=0, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"Question {run}. {PROMPT}"}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return stamps[0] - asked, decode_rate(stamps, tokens)


def measure(servers: Servers, profile: ServerProfile, repeats: int) -> dict[str, list[float]]:
    """Start to ready, then the replies' first-token times and decode rates; stops the server after."""
    found = {"ready": [start_ready(servers, profile)], "ttft": [], "decode": []}
    try:
        timed_reply(profile.url, -1)  # warm-up
        for run in range(repeats):
            ttft, rate = timed_reply(profile.url, run)
            found["ttft"].append(ttft)
            found["decode"].append(rate)
            logging.warning("%s run %d: first token %.2f s, %.2f tok/s", profile.name, run, ttft, rate)
    finally:
        servers.stop(profile.id)
    return found


def main() -> None:
    args = demo_arguments(__doc__)
    model = prepare_demo_model(args.data_dir)
    base = new_profile("one process", str(model))
    ranks = replace(base, name="3 ranks here", kind=DISTRIBUTED, hosts="\n".join(["127.0.0.1"] * 3))
    try:
        check_profile(replace(ranks, hosts="127.0.0.1\n127.0.0.1"))
        two = "Two ranks: the plan accepts them (not measured)."
    except ProfileInvalid as exc:
        two = f"Two ranks are refused by the plan: {exc}"
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = Servers(Path(tmp) / "logs", Path(tmp) / "hf", Store(Path(tmp) / "data").running_servers)
        try:
            results["one"] = measure(servers, check_profile(base), args.repeats)
            results["here"] = measure(servers, check_profile(ranks), args.repeats)
            try:
                hosts = make_hosts(Path(tmp) / "hosts", 3)
            except NamespacesUnavailable as exc:
                logging.warning("No hosts over ssh: %s", exc)
                hosts = None
            if hosts is not None:
                os.environ["PATH"] = f"{hosts.bin_dir}{os.pathsep}{os.environ['PATH']}"
                try:
                    across = replace(ranks, name="3 hosts over ssh", hosts="\n".join(hosts.addresses),
                                     network_ok=True)
                    results["ssh"] = measure(servers, check_profile(across), args.repeats)
                finally:
                    hosts.close()
        finally:
            servers.shutdown()
    one_decode = Row("Decode, one process (`mlx_lm.server`)", results["one"]["decode"], " tok/s", baseline=True)
    one_ttft = Row("First token, one process", results["one"]["ttft"], " s", baseline=True)
    rows = [one_decode]
    labels = {"here": "3 ranks on this machine (127.0.0.1, ring)", "ssh": "3 hosts over ssh (ring over veths)"}
    for key, label in labels.items():
        if key in results:
            rows.append(Row(f"Decode, {label}", results[key]["decode"], " tok/s", compared_with=one_decode))
    rows.append(one_ttft)
    for key, label in labels.items():
        if key in results:
            rows.append(Row(f"First token, {label}", results[key]["ttft"], " s", compared_with=one_ttft))
    for key, label in {"one": "one process", **labels}.items():
        if key in results:
            rows.append(Row(f"Start to ready, {label}", results[key]["ready"], " s"))
    print_table(f"Demo model, {TOKENS} greedy tokens per reply, tensor parallel; all ranks share this machine's "
                f"{os.cpu_count()} cores", rows)
    print(f"\n{two}")
    if "ssh" not in results:
        print("\nThe hosts over ssh were not measured: making network namespaces needs root.")


if __name__ == "__main__":
    main()
