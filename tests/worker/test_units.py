"""Pure functions of the worker: the launch commands (multi-node included), the worker's command
line, tailing, metric lines, checkpoint completeness, exit descriptions, the trainer's env."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from service.settings import Settings
from sgmim.rundir import WHOLE_TAG_RECORD
from worker.__main__ import celery_argv, identity, parse_args
from worker.multinode import (
    HostEntry,
    PlanError,
    is_local,
    parse_hostfile,
    plan_nodes,
    remote_argv,
)
from worker.runfiles import LineTail, last_lines, metric_points, scan_checkpoints
from worker.supervisor import Supervisor, describe_exit, service_setting_names

SPEC, RUN = Path("/runs/j1/spec.json"), Path("/runs/j1")
ENTRY = ["-m", "sgmim.train", str(SPEC), "--run-dir", str(RUN)]


def plan(nodes: int, gpus: int, hosts: str | None, **kw):
    entries = parse_hostfile(hosts) if hosts is not None else None
    return plan_nodes(
        nodes=nodes, gpus=gpus, spec_path=SPEC, run_dir=RUN, hostfile=entries, hostname="box-a", **kw
    )


def test_hostfile_format():
    text = "# boxes\nbox-a slots=8\n\n  box-b   slots=4  # the small one\n"
    assert parse_hostfile(text) == [HostEntry("box-a", 8), HostEntry("box-b", 4)]
    for bad in ("box-a", "box-a slots=x", "box-a slots=0", "box-a gpus=2"):
        with pytest.raises(PlanError, match="line 1"):
            parse_hostfile(bad)


def test_single_node_commands():
    (one,) = plan(1, 1, None)
    assert one.local and list(one.argv) == [sys.executable, *ENTRY]
    (four,) = plan(1, 4, None)
    assert list(four.argv[:3]) == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in four.argv and "--nnodes=1" in four.argv and "--node_rank=0" in four.argv
    assert list(four.argv[-5:]) == ENTRY


def test_multi_node_commands_one_per_box_node_rank_differs():
    nodes = plan(
        3,
        8,
        "box-a slots=8\nbox-b slots=8\nbox-c slots=8\nbox-d slots=8\n",
        node_addr="10.0.0.1",
        master_port=29500,
    )
    assert [(n.node_rank, n.host, n.local) for n in nodes] == [
        (0, "box-a", True),
        (1, "box-b", False),
        (2, "box-c", False),
    ]
    for n in nodes:
        assert list(n.argv) == [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=8",
            "--nnodes=3",
            f"--node_rank={n.node_rank}",
            "--master_addr=10.0.0.1",
            "--master_port=29500",
            "--max_restarts=0",
            *ENTRY,
        ]
        assert n.launch.world_size == 24


def test_this_box_is_node_0_wherever_it_is_listed_and_small_hosts_are_skipped():
    nodes = plan(2, 4, "box-b slots=2\nbox-c slots=4\nbox-a slots=4\n", master_port=29500)
    assert [(n.node_rank, n.host) for n in nodes] == [(0, "box-a"), (1, "box-c")]
    assert nodes[1].launch.master_addr == "box-a", "without node_addr: this box's name as listed"


def test_two_local_nodes_use_loopback_and_a_free_port():
    nodes = plan(2, 1, "127.0.0.1 slots=1\n127.0.0.1 slots=1\n", master_port=0)
    assert all(n.local for n in nodes) and [n.node_rank for n in nodes] == [0, 1]
    assert {n.launch.master_addr for n in nodes} == {"127.0.0.1"}
    ports = {n.launch.master_port for n in nodes}
    assert len(ports) == 1 and 0 not in ports


def test_placement_errors_are_readable():
    with pytest.raises(PlanError, match="no hostfile: set SGMIM_HOSTFILE"):
        plan(2, 1, None)
    with pytest.raises(PlanError, match=r"this box \(box-a\) is not in the hostfile \(it lists box-b\)"):
        plan(2, 1, "box-b slots=1\n")
    with pytest.raises(PlanError, match="only 2 host.s. with at least 4 slots"):
        plan(3, 4, "box-a slots=4\nbox-b slots=4\nbox-c slots=2\n")
    with pytest.raises(PlanError, match="this box has slots=2 in the hostfile"):
        plan(2, 4, "box-a slots=2\nbox-b slots=4\n")
    with pytest.raises(PlanError, match="set SGMIM_NODE_ADDR"):
        plan(2, 1, "localhost slots=1\nbox-b slots=1\n")


def test_remote_nodes_start_over_ssh_with_the_run_environment():
    nodes = plan(2, 8, "box-a slots=8\nbox-b slots=8\n", node_addr="10.0.0.1", master_port=29500)
    env = {
        "SGMIM_JOB_ID": "j1",
        "SGMIM_ATTEMPT": "2",
        "SGMIM_LOG_TO_STDOUT": "0",
        "PYTHONUNBUFFERED": "1",
        "NCCL_SOCKET_IFNAME": "ens5",
        "SGMIM_DATABASE_URL": "postgresql://secret",
        "HOME": "/root",
    }
    local = nodes[0].start_argv("ssh -o BatchMode=yes", env, "/app")
    assert local == list(nodes[0].argv), "node 0 runs here, as it is"
    remote = nodes[1].start_argv("ssh -o BatchMode=yes", env, "/app")
    assert remote[:4] == ["ssh", "-o", "BatchMode=yes", "-tt"] and remote[4] == "box-b"
    script = remote[5]
    assert script.startswith("cd /app && exec env ")
    words = shlex.split(script)
    assert "NCCL_SOCKET_IFNAME=ens5" in words and "SGMIM_JOB_ID=j1" in words and "SGMIM_ATTEMPT=2" in words
    assert not any("secret" in w or w.startswith("HOME=") for w in words), "only the run's own variables"
    assert words[-len(nodes[1].argv) :] == list(nodes[1].argv)
    assert "--node_rank=1" in words
    assert remote_argv("ssh", "h", {}, "/a b", ["x"]) == ["ssh", "-tt", "h", "cd '/a b' && exec env  x"]


def test_local_names():
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("127.0.1.1")
    assert is_local("box-a.example.org", hostname="box-a") and is_local("10.0.0.1", node_addr="10.0.0.1")
    assert not is_local("box-b", node_addr="10.0.0.1", hostname="box-a")


def test_worker_command_line_defaults_and_flags():
    settings = Settings(data_dir=Path("/tmp/x"), multinode_launcher="ssh")
    argv = celery_argv(parse_args([]), settings)
    assert argv[0] == "worker"
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--pool"] == "prefork" and flags["--concurrency"] == "1"
    assert flags["--prefetch-multiplier"] == "1" and flags["--queues"] == "sgmim"
    assert flags["--hostname"] == "sgmim@%h", "node name keeps an @host part for the health check"
    argv = celery_argv(
        parse_args(["--queues", "sgmim, sgmim.h100", "--concurrency", "2", "--name", "gpu"]), settings
    )
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--queues"] == "sgmim,sgmim.h100" and flags["--concurrency"] == "2"
    assert flags["--hostname"] == "gpu@%h"
    assert dict(zip(argv[1::2], argv[2::2], strict=False))["--hostname"] == "gpu@%h"
    assert celery_argv(parse_args(["--name", "a@b"]), settings)[argv.index("--hostname") + 1] == "a@b"


def test_a_worker_also_consumes_its_host_queue_and_registers_what_it_serves():
    settings = Settings(data_dir=Path("/tmp/x"), worker_host="box-a", node_addr="10.0.0.1")
    args = parse_args(["--queues", "sgmim,sgmim.h100"])
    flags = dict(zip(celery_argv(args, settings)[1::2], celery_argv(args, settings)[2::2], strict=False))
    assert flags["--queues"] == "sgmim,sgmim.h100,sgmim.host.box-a"
    me = identity(args, settings)
    assert (me.host, me.address, me.gpu_types) == ("box-a", "10.0.0.1", ["h100"])
    assert identity(parse_args([]), Settings(data_dir=Path("/tmp/x"), worker_host="b")).address == "b"


def test_serve_with_worker_starts_the_same_worker(monkeypatch, tmp_path):
    from service import cli_entry

    seen = {}

    class FakePopen:
        def __init__(self, cmd, **kw):
            seen["cmd"], seen["env"] = cmd, kw["env"]

    monkeypatch.setattr(cli_entry.subprocess, "Popen", FakePopen)
    cli_entry.start_worker(Settings(data_dir=tmp_path, broker_url="redis://r:6379/0"))
    assert seen["cmd"][:3] == [sys.executable, "-m", "worker"]
    assert seen["cmd"][3:] == ["--queues", "sgmim", "--concurrency", "1"]
    assert seen["env"]["SGMIM_BROKER_URL"] == "redis://r:6379/0"


def test_line_tail_waits_for_whole_lines(tmp_path):
    path = tmp_path / "f.log"
    tail = LineTail(path)
    assert tail.read() == []
    path.write_bytes(b"one\ntw")
    assert tail.read() == [b"one"] and tail.offset == 4
    assert tail.read() == []
    with path.open("ab") as f:
        f.write(b"o\nthree")
    assert tail.read() == [b"two"]
    assert tail.read(final=True) == [b"three"] and tail.offset == path.stat().st_size
    resumed = LineTail(path, 4)
    assert resumed.read(final=True) == [b"two", b"three"]
    path.write_bytes(b"x" * 10)
    long = LineTail(path)
    assert long.read(max_bytes=4) == [b"xxxx"], "a line longer than a read is taken in pieces"
    path.write_bytes(b"new\n")
    assert tail.read() == [b"new"], "a file that shrank is read again from the start"


def test_metric_lines_become_points():
    line = b'{"step": 3, "epoch": 0.5, "loss": 1.5, "lr": 0.001, "ok": true, "tag": "x", "time": 12.5}'
    assert metric_points(line) == [
        {"name": "loss", "value": 1.5, "step": 3, "epoch": 0.5, "time": 12.5},
        {"name": "lr", "value": 0.001, "step": 3, "epoch": 0.5, "time": 12.5},
    ]
    assert metric_points(b'{"step": 4, "epoch_time": 9}')[0]["name"] == "epoch_time"
    assert metric_points(b'{"step": 1, "loss": NaN}')[0]["value"] != metric_points(b'{"loss": 1}')[0]["value"]
    assert metric_points(b"{broken") == [] and metric_points(b"[1, 2]") == []
    assert metric_points(b'{"' + b"n" * 200 + b'": 1}') == [], "names the database refuses are skipped"


def test_checkpoint_tags_are_complete_once_latest_names_them(tmp_path):
    ckpt = tmp_path / "checkpoints"
    assert scan_checkpoints(ckpt).complete == {}
    for step in (4, 8, 12):
        (ckpt / f"global_step{step}").mkdir(parents=True)
    (ckpt / "global_step8_universal").mkdir()
    scan = scan_checkpoints(ckpt)
    assert scan.complete == {} and scan.present == {"global_step4", "global_step8", "global_step12"}
    (ckpt / "latest").write_text("global_step8")
    assert scan_checkpoints(ckpt).complete == {"global_step4": 4, "global_step8": 8}


def test_a_tag_latest_names_before_every_rank_saved_it_is_not_complete(tmp_path):
    """A node lost mid-save: rank 0 wrote its files and `latest`, the other rank's shard is cut
    short, and the trainer's record (written after every rank saved) is missing."""
    ckpt = tmp_path / "checkpoints"
    for step in (4, 8, 12):
        (ckpt / f"global_step{step}").mkdir(parents=True)
    for whole in ("global_step4", "global_step8"):
        (ckpt / whole / WHOLE_TAG_RECORD).write_text('{"zero_stage": 2}')
    (ckpt / "latest").write_text("global_step12")
    assert scan_checkpoints(ckpt).complete == {"global_step4": 4, "global_step8": 8}


def test_exit_descriptions():
    assert describe_exit(2) == "trainer exited with code 2 (bad spec or input)"
    assert describe_exit(3) == "trainer exited with code 3 (non-finite loss or gradient)"
    assert describe_exit(1) == "trainer exited with code 1 (training error)"
    assert describe_exit(-9) == "trainer was killed by SIGKILL"


def test_last_lines(tmp_path):
    path = tmp_path / "train.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)) + "\n\n")
    assert last_lines(path, 3) == ["line 97", "line 98", "line 99"]
    assert last_lines(tmp_path / "missing") == []


def test_the_trainer_does_not_get_the_service_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("SGMIM_DATABASE_URL", "postgresql://user:secret@db/sgmim")
    monkeypatch.setenv("SGMIM_API_TOKENS", "secret")
    monkeypatch.setenv("SGMIM_SOMETHING_ELSE", "kept")
    assert {"SGMIM_DATABASE_URL", "SGMIM_BROKER_URL", "SGMIM_API_TOKENS"} <= service_setting_names()
    settings = Settings(data_dir=tmp_path)
    sup = Supervisor(None, settings, "j1", 3)  # type: ignore[arg-type]
    sup.nodes = plan(1, 1, None)
    env = sup.base_environment()
    assert "SGMIM_DATABASE_URL" not in env and "SGMIM_API_TOKENS" not in env
    assert env["SGMIM_SOMETHING_ELSE"] == "kept" and env["PATH"] == os.environ["PATH"]
    assert env["SGMIM_JOB_ID"] == "j1" and env["SGMIM_ATTEMPT"] == "3"
    assert env["SGMIM_LOG_TO_STDOUT"] == "0" and env["PYTHONUNBUFFERED"] == "1"
