"""The plan of a model split over several ranks, checked before anything starts: the demo model (9 heads, 3 KV
heads) splits over 3 ranks by tensor parallel and not over 2; pipeline parallel needs mlx-lm's pipeline support
and an indexed checkpoint (a tiny random Qwen2 has both); each rank's share comes from the safetensors headers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_gradio.models.fit import kv_bytes, model_shape
from mlx_gradio.models.folders import read_config
from mlx_gradio.serving.distributed_plan import (
    PIPELINE,
    TENSOR,
    describe,
    header_sizes,
    parse_hosts,
    pipeline_layers,
    plan_split,
    ring_hostfile,
)

LOCAL3 = ["127.0.0.1"] * 3


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 (pipeline support in mlx-lm), saved by mlx-lm with its weight index."""
    import mlx.core as mx
    from mlx_lm.models.qwen2 import Model, ModelArgs
    from mlx_lm.utils import save_config, save_model

    folder = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    config = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 5, "intermediate_size": 128,
              "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "vocab_size": 256,
              "max_position_embeddings": 2048, "rope_theta": 10000.0, "tie_word_embeddings": True}
    model = Model(ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    save_model(folder, model)
    save_config(config, folder / "config.json")
    return folder


def test_the_demo_model_splits_over_three_ranks_and_each_holds_a_third_of_its_layers(demo_model: Path):
    plan = plan_split(demo_model, LOCAL3, TENSOR, 4096)
    assert plan.ok, plan.problems
    total = sum(header_sizes(demo_model).values())
    shares = [s.weight_bytes for s in plan.shares]
    assert len(set(shares)) == 1 and total / 3 < shares[0] < total  # the layers cut, the embeddings whole
    whole_cache = kv_bytes(model_shape(read_config(demo_model), total), 4096)
    assert abs(plan.shares[0].kv_bytes * 3 - whole_cache) < 3  # the key-value heads are cut too
    assert "rank 2 on 127.0.0.1" in describe(plan) and "Tensor parallel over 3 ranks" in describe(plan)


def test_two_ranks_are_refused_with_the_heads_and_what_would_work(demo_model: Path):
    plan = plan_split(demo_model, LOCAL3[:2], TENSOR, 4096)
    assert not plan.ok and not plan.shares
    assert "9 attention heads and 3 key-value heads" in describe(plan) and "(3 would)" in describe(plan)
    assert "two hosts or more" in describe(plan_split(demo_model, ["127.0.0.1"], TENSOR, 4096))


def test_pipeline_needs_mlx_lms_support_and_an_indexed_checkpoint(demo_model: Path, tiny_qwen2: Path):
    refused = describe(plan_split(demo_model, LOCAL3, PIPELINE, 4096))
    assert "llama model has no pipeline support" in refused and "model.safetensors.index.json" in refused
    plan = plan_split(tiny_qwen2, LOCAL3, PIPELINE, 1024)
    assert plan.ok, plan.problems
    assert [s.layers for s in plan.shares] == [(3, 5), (1, 3), (0, 1)]  # rank 0 runs the last layers
    sizes = header_sizes(tiny_qwen2)
    shared = sum(v for k, v in sizes.items() if ".layers." not in k)
    assert sum(s.weight_bytes for s in plan.shares) == sum(sizes.values()) + 2 * shared  # whole on every rank
    assert plan.shares[0].kv_bytes == 2 * plan.shares[2].kv_bytes  # two layers' cache against one


def test_the_layer_split_is_mlx_lms_own():
    from mlx_lm.models.pipeline import PipelineMixin

    class Group:
        def __init__(self, rank: int, size: int) -> None:
            self._rank, self._size = rank, size

        def rank(self) -> int:
            return self._rank

        def size(self) -> int:
            return self._size

    class Layers(PipelineMixin):
        pass

    for layers, ranks in ((30, 3), (30, 4), (7, 2), (5, 5)):
        split = []
        for rank in range(ranks):
            model = Layers()
            model.layers = list(range(layers))
            model.pipeline(Group(rank, ranks))
            split.append((model.start_idx, model.end_idx))
        assert pipeline_layers(layers, ranks) == split


def test_hosts_are_read_from_lines_commas_or_a_hostfile():
    assert parse_hosts("localhost\n127.0.0.1, 10.0.0.2\n\n") == ["127.0.0.1", "127.0.0.1", "10.0.0.2"]
    # mlx.launch's ring listens on addresses: a name is resolved, a hostfile's own addresses are kept.
    assert ring_hostfile("localhost\n10.0.0.2") == [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]},
                                                     {"ssh": "10.0.0.2", "ips": ["10.0.0.2"]}]
    written = [{"ssh": "mac-a.local", "ips": ["192.168.1.12"]}, {"ssh": "me@10.0.0.2", "ips": ["10.0.0.2"]}]
    assert ring_hostfile(json.dumps(written)) == written
    assert parse_hosts(json.dumps(written)) == ["mac-a.local", "me@10.0.0.2"]
    with pytest.raises(ValueError, match="no-such-host.invalid does not resolve"):
        ring_hostfile("no-such-host.invalid")
    with pytest.raises(ValueError, match="not a host name"):
        parse_hosts("good-host\nbad host; rm -rf /")
    with pytest.raises(ValueError, match="not JSON"):
        parse_hosts("[{")


def test_jaccl_needs_a_hostfile_with_the_rdma_device_between_each_pair_of_hosts(demo_model: Path):
    from dataclasses import replace

    from mlx_gradio.errors import ProfileInvalid
    from mlx_gradio.serving.distributed_plan import jaccl_problem
    from mlx_gradio.serving.profiles import DISTRIBUTED, JACCL, check_profile, new_profile

    # As mlx.distributed_config writes it for three Macs cabled to each other (its own docstring's example).
    cabled = [{"ssh": "m1", "ips": ["10.0.0.1"], "rdma": [None, "rdma_en2", "rdma_en3"]},
              {"ssh": "m2", "ips": ["10.0.0.2"], "rdma": ["rdma_en2", None, "rdma_en3"]},
              {"ssh": "m3", "ips": ["10.0.0.3"], "rdma": ["rdma_en2", "rdma_en3", None]}]
    entries = ring_hostfile(json.dumps(cabled))
    assert entries == cabled and jaccl_problem(entries) == ""  # mlx.launch gets the devices as written
    uncabled = [dict(e) for e in cabled]
    uncabled[1]["rdma"] = ["rdma_en2", None, None]
    assert jaccl_problem(uncabled).startswith("The hostfile lists no RDMA device from m2 to m3")
    with pytest.raises(ValueError, match='"rdma" lists one RDMA device'):
        ring_hostfile(json.dumps([{"ssh": "m1", "rdma": "rdma_en2"}]))
    # A plain list of hosts says nothing of RDMA: JACCL is refused before anything starts; the ring is not.
    profile = replace(new_profile("split", str(demo_model), 18123), kind=DISTRIBUTED, hosts="\n".join(LOCAL3))
    with pytest.raises(ProfileInvalid, match="JACCL needs the RDMA device between each pair of hosts"):
        check_profile(replace(profile, backend=JACCL))
    assert check_profile(profile).backend == "ring"


def test_each_host_is_asked_for_its_versions_memory_and_the_model(demo_model: Path, tmp_path: Path):
    import sys

    from mlx_gradio.serving.distributed_hosts import COPY_BUTTON, check_hosts, this_machine, versions_table
    from mlx_gradio.serving.distributed_plan import RankShare, SplitPlan

    plan = plan_split(demo_model, LOCAL3, TENSOR, 4096)
    facts, problems = check_hosts(plan, sys.executable, demo_model)
    assert not problems and len(facts) == 1  # three ranks on one host: asked once
    [local] = facts
    mine = this_machine()
    assert (local.python, local.mlx, local.mlx_lm) == (mine.python, mine.mlx, mine.mlx_lm) and local.has_model
    assert local.memory_bytes > 2**30 and "| 127.0.0.1 |" in versions_table(facts)

    _, problems = check_hosts(plan, sys.executable, tmp_path / "elsewhere")
    assert problems == [f"127.0.0.1 has no model at {tmp_path / 'elsewhere'}: copy it there first (“{COPY_BUTTON}”)."]
    huge = SplitPlan(TENSOR, ("127.0.0.1", "127.0.0.1"), 4096, (),
                     tuple(RankShare(r, "127.0.0.1", (0, 30), 2**50, 0) for r in range(2)))
    _, problems = check_hosts(huge, sys.executable, demo_model)
    assert len(problems) == 1 and "would hold 2 rank(s) needing" in problems[0]


def test_a_host_that_ssh_cannot_reach_is_named_with_the_reason(demo_model: Path):
    import sys

    from mlx_gradio.serving.distributed_hosts import check_hosts

    plan = plan_split(demo_model, ["127.0.0.1", "127.0.0.1", "127.0.0.2"], TENSOR, 4096)
    facts, problems = check_hosts(plan, sys.executable, demo_model)  # no sshd listens on 127.0.0.2
    assert [f.host for f in facts] == ["127.0.0.1", "127.0.0.2"] and not facts[0].problem
    assert len(problems) == 1 and problems[0].startswith("127.0.0.2 cannot be reached over ssh without a password")
    assert problems[0].split("password: ", 1)[1].strip()  # ssh's own reason (here: the connection was refused)


def test_each_rank_is_wrapped_watched_and_stopped_on_its_host(tmp_path: Path):
    """The real wrapper, around a stand-in rank (a sleeping Python that prints); the host is this machine."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlx_gradio.serving.distributed_ranks import dead_rank, rank_command, rank_facts, stop_ranks

    job = f"test-{os.getpid()}"
    rank = [sys.executable, "-c", "import time; print('loaded', flush=True); time.sleep(600)  # mlx_lm stand-in"]
    log = tmp_path / "ranks.log"
    with open(log, "wb") as out:
        wrapper = subprocess.Popen(rank_command(job, str(tmp_path / "hf"), rank), stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, "MLX_RANK": "1"})
    hosts = "127.0.0.1\n127.0.0.1"
    deadline = time.monotonic() + 30
    while not (facts := rank_facts(job, hosts, log.read_text(), sys.executable))[1].log_tail:
        assert time.monotonic() < deadline, facts
    assert facts[0].pid is None and facts[1].host == "127.0.0.1" and facts[1].state[:1] in "RS"
    assert facts[1].log_tail == "loaded" and facts[1].rss_bytes > 1_000_000 and (tmp_path / "hf").is_dir()
    os.kill(facts[1].pid, signal.SIGSTOP)
    assert rank_facts(job, hosts, "", sys.executable)[1].stopped
    assert stop_ranks(job, hosts) == []  # SIGTERM reaches a stopped rank too (with SIGCONT)
    assert wrapper.wait(timeout=30) == 128 + signal.SIGTERM  # exits as a shell does, so mlx.launch says how
    assert "[rank 1] ended: killed by signal 15" in log.read_text()
    killed = "[WARN] Node with rank 1 exited with code 137"
    assert dead_rank(killed, hosts) == "rank 1 on 127.0.0.1 was killed by SIGKILL"
    assert dead_rank("[WARN] Node with rank 0 exited with code 1", hosts) == "rank 0 on 127.0.0.1 exited with code 1"
    aborted = ("[rank 0] RuntimeError: [ring] connection to a peer was lost\n"
               "[WARN] Node with rank 0 exited with code 134\n" + killed)  # rank 0 went because rank 1 had
    assert dead_rank(aborted, hosts) == "rank 1 on 127.0.0.1 was killed by SIGKILL"
