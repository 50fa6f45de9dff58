"""One node of a multi-node job, started by its own box's worker (no SSH).

The placement (`service.broker.place_gang`) reserved N workers on distinct hosts and sent each
`sgmim.run_node(job_id, attempt, node_rank)` on its host's queue. Each node's supervisor runs
one torchrun with the c10d rendezvous hosted by node 0 (`--rdzv-id <job>-<attempt>`), appends
its launcher's output to the job's log tagged `[node r]`, and keeps its `job_nodes` row alive:

- node 0 owns the job like a single-node supervisor (job heartbeat, rank-0 metrics from the
  shared run directory, checkpoints, the outcome). It picks the rendezvous port, writes it to
  its row, and every CANCEL_POLL_S looks at the other nodes: one that exited non-zero fails
  the attempt (stop, `failed` with that node's exit); one whose heartbeat is older than
  `stale_heartbeat_s`, or still reserved `gang_start_timeout_s` after the placement, is lost
  (stop, requeue within `max_restarts`; the next placement resumes from the checkpoint). When
  its own trainer fails, it first waits for the others to report, so that a vanished box is
  told apart from a trainer error; when it succeeds, it waits (briefly) for the others' exits
  before the job ends `succeeded`, so that no process of a succeeded attempt still runs;
- node r > 0 waits for node 0's port, starts its torchrun, and heartbeats its row; when the
  attempt no longer owns the job (failed, requeued, finished) or the job is cancelling, it
  stops its processes. Its trainer's exit code goes to its row (node 0 reads it).

If node 0's box vanishes, the job's heartbeat goes stale and the reaper requeues it; the other
nodes' trainers lose the rendezvous store and exit, or are stopped at their next heartbeat.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from service.db.gang import NODE_EXITED, NODE_RESERVED, NODE_RUNNING, NODE_STOPPED, NodeInfo
from service.db.models import utcnow
from service.db.repo import JobRepo
from service.settings import Settings
from sgmim import rundir
from sgmim.spec import AnyJob
from sgmim.status import JobStatus
from sgmim.train.launch import Launch, gpu_count, rendezvous_command
from worker.multinode import NodeLaunch
from worker.runfiles import LineTail, last_lines, read_json
from worker.supervisor import CANCEL_POLL_S, ERROR_LOG_LINES, TICK_S, LaunchError, Supervisor, describe_exit


def node_log_name(node_rank: int) -> str:
    """Node 0 writes the job's train.log; node r its own file next to it (appends from several
    boxes to one file on shared storage are not atomic)."""
    return rundir.TRAIN_LOG if node_rank == 0 else f"train.node{node_rank}.log"


def free_port_on(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class GangSupervisor(Supervisor):
    def __init__(self, repo: JobRepo, settings: Settings, node: NodeInfo, worker_name: str):
        super().__init__(repo, settings, node.job_id, node.attempt, worker_name)
        self.node = node
        self.rank = node.node_rank
        self.log_tag = f"[node {self.rank}] "
        self.gang_node = self.rank
        if self.rank > 0:
            self.log_path = self.run_dir / node_log_name(self.rank)
            self.state_path = self.run_dir / f".worker-state.node{self.rank}.json"
            self.tail_metrics = False

    # --- launch --------------------------------------------------------------------------------

    def plan(self, spec: AnyJob, spec_path: Path) -> list[NodeLaunch]:
        have = gpu_count()
        if have and have < spec.resources.gpus:
            raise LaunchError(
                f"the job asks for resources.gpus={spec.resources.gpus} per node, but {self.node.host} "
                f"has {have} GPU(s)"
            )
        gang = self.repo.gang_nodes(self.job_id, self.attempt)
        if self.rank == 0:
            port = self.settings.master_port or free_port_on(self.node.address)
            self.repo.set_rendezvous_port(self.job_id, self.attempt, port)
            master = self.node.address
        else:
            master, port = self._wait_for_rendezvous(gang[0])
        launch = Launch(
            nproc_per_node=spec.resources.gpus, nnodes=len(gang), node_rank=self.rank,
            master_addr=master, master_port=port,
        )
        argv = rendezvous_command(
            spec_path, self.run_dir, launch, rdzv_id=f"{self.job_id}-{self.attempt}",
            is_host=self.rank == 0, local_addr=self.node.address,
            join_timeout_s=int(self.settings.gang_start_timeout_s),
        )
        return [NodeLaunch(self.rank, self.node.host, True, launch, tuple(argv))]

    def _wait_for_rendezvous(self, node0: NodeInfo) -> tuple[str, int]:
        deadline = time.monotonic() + self.settings.gang_start_timeout_s
        while node0.port is None:
            if time.monotonic() > deadline:
                raise LaunchError(f"node 0 ({node0.worker}) did not publish its rendezvous port")
            if self.repo.node_heartbeat(self.job_id, self.attempt, self.rank) is None:
                raise LaunchError("the attempt ended before node 0 started")
            time.sleep(TICK_S)
            node0 = self.repo.gang_nodes(self.job_id, self.attempt)[0]
        return node0.address, node0.port

    # --- node r > 0 ----------------------------------------------------------------------------

    def run(self) -> str:
        if self.rank == 0:
            return super().run()
        try:
            outcome = self._run_peer()
        except Exception as exc:
            self._log_line(f"worker error: {type(exc).__name__}: {exc}")
            outcome = "error"
            self._stop()
        self._pump(final=True)
        return outcome

    def _run_peer(self) -> str:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = read_json(self.state_path) or {}
        # never read here (tail_metrics is off): node 0 moves rank 0's metrics
        self.metrics_tail = LineTail(self.run_dir / rundir.METRICS, 0)
        self.log_tail = LineTail(self.log_path, int(state.get("log_offset", 0)))
        try:
            spec = self.resolve_spec(self.repo.get(self.job_id).spec)
            self.nodes = self.plan(spec, self.run_dir / rundir.SPEC)  # node 0 wrote it
        except LaunchError as exc:
            self._log_line(f"node {self.rank} of attempt {self.attempt} does not start: {exc}")
            self.repo.node_ended(self.job_id, self.attempt, self.rank, NODE_STOPPED, None)
            return "not-started"
        self._launch(spec)
        next_beat = time.monotonic()
        while True:
            code = self.procs[0].poll()
            self._pump()
            if code is not None:
                self._stop(0)
                self._log_line(f"node {self.rank}: {describe_exit(code) if code else 'trainer exited'}")
                self._pump(final=True)  # node 0 may end the job as soon as this node's row says so
                self.repo.node_ended(self.job_id, self.attempt, self.rank, NODE_EXITED, code)
                return "exited" if code == 0 else "failed"
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + min(self.settings.heartbeat_interval_s, CANCEL_POLL_S)
                status = self._db(self.repo.node_heartbeat, self.job_id, self.attempt, self.rank)
                if status is None or status == JobStatus.CANCELLING:
                    why = "the job is cancelling" if status else "the attempt ended"
                    self._log_line(f"node {self.rank}: {why}: stopping its processes")
                    self._stop(pump=True)
                    self.repo.node_ended(self.job_id, self.attempt, self.rank, NODE_STOPPED, None)
                    return "stopped"
            time.sleep(TICK_S)

    # --- node 0 --------------------------------------------------------------------------------

    def _peer_verdict(self) -> tuple[str, NodeInfo] | None:
        """("failed" | "lost", node) for the first other node that ended the attempt, else None."""
        now = utcnow()
        for node in self.repo.gang_nodes(self.job_id, self.attempt)[1:]:
            if node.status == NODE_EXITED and node.exit_code not in (0, None):
                return "failed", node
            if node.status == NODE_STOPPED:  # while the attempt runs: it could not start
                return "failed", node
            if node.status == NODE_RESERVED:
                if (now - node.reserved_at).total_seconds() > self.settings.gang_start_timeout_s:
                    return "lost", node
            elif (
                node.status == NODE_RUNNING
                and node.heartbeat_at is not None
                and (now - node.heartbeat_at).total_seconds() > self.settings.stale_heartbeat_s
            ):
                return "lost", node
        return None

    def _attempt_check(self) -> str | None:
        verdict = self._db(self._peer_verdict)
        if not isinstance(verdict, tuple):
            return None
        return self._end_for_peer(*verdict)

    def _end_for_peer(self, what: str, node: NodeInfo) -> str:
        if what == "lost":
            state = "did not start" if node.status == NODE_RESERVED else "stopped heartbeating"
            reason = f"node {node.node_rank} (worker {node.worker} on {node.host}) {state}"
        else:
            exit_text = "could not start" if node.exit_code is None else describe_exit(node.exit_code)
            reason = f"node {node.node_rank} (worker {node.worker} on {node.host}): {exit_text}"
        self._log_line(f"{reason}: stopping this attempt's processes")
        self._stop(min(self.settings.cancel_grace_s, 5.0), pump=True)
        self._pump(final=True)
        self._db(self.sync_checkpoints)
        if what == "failed":
            tail = last_lines(self.run_dir / node_log_name(node.node_rank), ERROR_LOG_LINES)
            return self._finish(JobStatus.FAILED, reason + (":\n" + "\n".join(tail) if tail else ""))
        outcome = self.repo.requeue(self.job_id, reason, attempt=self.attempt)
        return "lost" if outcome is None else f"requeued ({outcome})"

    def _exited(self, node0_finished: bool = False) -> str:
        code = self.procs[0].poll()
        if code == 0:
            failed = self._await_peers_exit()
            if failed is not None:
                return self._end_for_peer("failed", failed)
        elif code is not None:
            # a vanished box makes this node's trainer fail first: wait for the others' word
            wait_s = self.settings.stale_heartbeat_s + 2 * self.settings.heartbeat_interval_s
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                verdict = self._db(self._peer_verdict)
                if isinstance(verdict, tuple):
                    return self._end_for_peer(*verdict)
                nodes = self._db(self.repo.gang_nodes, self.job_id, self.attempt)
                if isinstance(nodes, list) and all(n.status != NODE_RUNNING for n in nodes[1:]):
                    break
                self._pump()
                self._db(self.repo.heartbeat, self.job_id, self.attempt, self.progress())
                time.sleep(CANCEL_POLL_S)
        return super()._exited(node0_finished)

    def _await_peers_exit(self) -> NodeInfo | None:
        """Node 0's trainer succeeded: every rank passed the final barrier, so the other nodes'
        launchers are exiting too. Wait for each to report its exit before the job becomes
        `succeeded` (the job's end means every process of the attempt is gone, and a node told
        the attempt is over would kill a launcher that is exiting on its own), at most
        max(cancel_grace_s, 10 s), heartbeating the job meanwhile; a node still running then is
        stopped by its own heartbeat. Returns a node that exited non-zero (the attempt fails,
        as it would on one box)."""
        deadline = time.monotonic() + max(self.settings.cancel_grace_s, 10.0)
        next_beat = time.monotonic() + self.settings.heartbeat_interval_s
        while True:
            nodes = self._db(self.repo.gang_nodes, self.job_id, self.attempt)
            if isinstance(nodes, list):
                peers = nodes[1:]
                failed = [n for n in peers if n.status == NODE_EXITED and n.exit_code not in (0, None)]
                if failed:
                    return failed[0]
                running = [n for n in peers if n.status in (NODE_RESERVED, NODE_RUNNING)]
                if not running:
                    return None
            if time.monotonic() > deadline:
                self._log_line("node 0 finished; other nodes did not report an exit: their workers stop them")
                return None
            self._pump()
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.settings.heartbeat_interval_s
                self._db(self.repo.heartbeat, self.job_id, self.attempt, self.progress())
            time.sleep(TICK_S)
