"""The job's memory limit (--mem-mb, SLURM, cgroup, machine) and the LRP stem it chooses on CPU."""

import pytest

from deeplight_bids.lrp.analyzer import WHOLE_STEM_MIN_MIB, stem_batch_for_memory
from deeplight_bids.runtime import memory_limit


def test_requested_limit_comes_first(tmp_path):
    env = {"SLURM_MEM_PER_NODE": "16000"}
    assert memory_limit(4000, environ=env, cgroup_root=tmp_path) == (4000, "--mem-mb")


def test_slurm_per_node_then_per_cpu(tmp_path):
    assert memory_limit(environ={"SLURM_MEM_PER_NODE": "16000"}, cgroup_root=tmp_path) == (16000, "SLURM_MEM_PER_NODE")
    limit, source = memory_limit(
        environ={"SLURM_MEM_PER_CPU": "1500", "SLURM_CPUS_PER_TASK": "4"}, cgroup_root=tmp_path
    )
    assert (limit, source.split()[0]) == (6000, "SLURM_MEM_PER_CPU")


def test_cgroup_v2_and_v1(tmp_path):
    (tmp_path / "memory.max").write_text(f"{3 * 2**30}\n")
    assert memory_limit(environ={}, cgroup_root=tmp_path) == (3072, "cgroup memory.max")
    (tmp_path / "memory.max").write_text("max\n")  # v2 without a limit: fall through
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{5 * 2**30}\n")
    assert memory_limit(environ={}, cgroup_root=tmp_path) == (5120, "cgroup memory.limit_in_bytes")


def test_unlimited_cgroup_falls_back_to_the_machine(tmp_path):
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1 "unlimited"
    limit, source = memory_limit(environ={}, cgroup_root=tmp_path)
    assert source == "physical memory" and limit > 256


@pytest.mark.parametrize(
    ("limit", "expected"), [(3072, 1), (WHOLE_STEM_MIN_MIB - 1, 1), (WHOLE_STEM_MIN_MIB, None), (None, None)]
)
def test_stem_per_volume_only_below_the_threshold_on_cpu(monkeypatch, limit, expected):
    from deeplight_bids import backend

    monkeypatch.setattr(backend, "has_gpu", lambda: False)
    assert stem_batch_for_memory(limit) == expected
    monkeypatch.setattr(backend, "has_gpu", lambda: True)
    assert stem_batch_for_memory(limit) is None  # a GPU takes the whole pass


def test_mem_mb_reaches_the_config(tmp_path):
    from deeplight_bids.cli.parser import parse_args
    from deeplight_bids.config import Config

    bids = tmp_path / "bids"
    bids.mkdir()
    args = parse_args([str(bids), str(tmp_path / "out"), "participant", "--mem-mb", "4000"])
    assert Config.from_args(args).mem_mb == 4000
    assert Config.from_args(parse_args([str(bids), str(tmp_path / "out"), "participant"])).mem_mb == 0


def test_mem_mb_help_names_the_threshold():
    # the parser does not import the LRP module (Keras) for its help: its text repeats the number
    from deeplight_bids.cli.parser import build_parser

    help_text = build_parser().format_help().replace("\n", " ")
    assert f"below {WHOLE_STEM_MIN_MIB} the LRP pass" in " ".join(help_text.split())
