"""Service settings (pydantic-settings, environment prefix `SGMIM_`).

Zero configuration gives the embedded default of docs/architecture.md: a SQLite file and a
filesystem broker under `~/.sgmim`, loopback only, no token. Everything else is chosen by
setting environment variables, never by code branches:

    SGMIM_DATABASE_URL=postgresql://user@db/sgmim  SGMIM_BROKER_URL=redis://redis:6379/0
    SGMIM_API_TOKENS=secret1,secret2  SGMIM_HOST=0.0.0.0

`data_dir` defaults to `~/.sgmim` (not `./.sgmim`) so that an API and a worker started from
different working directories share one database, broker folder and artifact root.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_QUEUE = "sgmim"


class Settings(BaseSettings):
    """All settings of the API server (and of the worker's Celery app)."""

    model_config = SettingsConfigDict(env_prefix="SGMIM_", extra="ignore", frozen=False)

    data_dir: Path = Field(
        Path("~/.sgmim"),
        description="root of the embedded state: the SQLite file, the filesystem broker's folders "
        "and (unless artifact_root is set) the artifacts. `~` is expanded.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL. Default: sqlite:///<data_dir>/sgmim.db (WAL mode). "
        "postgresql://... uses psycopg 3 (postgresql+psycopg://).",
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker. Default: filesystem:// (kombu's filesystem transport, folders "
        "under <data_dir>/broker; no server process). redis://host:6379/0 in deployment.",
    )
    result_backend: str | None = Field(
        None, description="Celery result backend. Default none: the database is the source of truth."
    )
    artifact_root: Path | None = Field(
        None,
        description="root of the run directories <artifact_root>/jobs/<job_id>/. "
        "Default: <data_dir>/artifacts.",
    )
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated bearer tokens. When any token is configured (here, in "
        "token_file or in the api_tokens table at start), every route but /healthz "
        "needs `Authorization: Bearer <token>`.",
    )
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="comma-separated folders that the data paths of a job spec (data.root, split "
        "files, init_path) must lie under, checked at submit (422 naming the field) and again by "
        "the worker with symlinks resolved; the artifact root is always allowed. Default: the "
        "user's home and data_dir (the embedded mode). Set it in deployment, e.g. /datasets.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="without tokens (loopback mode): comma-separated host names the Host header "
        "may carry besides loopback names and addresses and the address the server listens on "
        "(DNS rebinding protection).",
    )
    token_file: Path | None = Field(
        None, description="file with one bearer token per line (blank lines and # comments ignored)."
    )
    host: str = Field(
        "127.0.0.1",
        description="bind address of `run_server`. A non-loopback address "
        "is refused unless a token is configured.",
    )
    port: int = Field(8000, ge=0, le=65535, description="bind port of `run_server`.")
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="how long the server keeps an idle keep-alive connection open. Longer than "
        "clients keep idle pooled connections (httpx: 5 s, browsers about 60 s): with the old 5 s "
        "a request sent on a pooled connection just as the server closed it got no response.",
    )
    api_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="API processes of `sgmim serve` (uvicorn --workers); each has its own "
        "database pool. SSE streams read from the database, so they stay exactly-once whichever "
        "process serves them.",
    )
    access_log: bool = Field(True, description="uvicorn's access log of `sgmim serve`.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="request bodies larger than this get 413.")
    max_string_length: int = Field(
        4096, ge=16, description="longest string accepted anywhere in a job spec (422 otherwise)."
    )
    default_queue: str = Field(
        DEFAULT_QUEUE,
        description="Celery queue of jobs without resources.gpu_type; "
        "jobs with one go to <default_queue>.<gpu_type>.",
    )
    broker_visibility_timeout_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="Redis visibility timeout: an unacked message is redelivered after this long. "
        "Set longer than the longest job; a redelivered message for a job that is no "
        "longer queued fails its claim and does nothing.",
    )
    heartbeat_interval_s: float = Field(5.0, gt=0, description="how often a worker heartbeats a running job.")
    stale_heartbeat_s: float = Field(
        120.0, gt=0, description="reaper: a running job whose heartbeat is older than this lost its worker."
    )
    unclaimed_requeue_s: float = Field(
        300.0,
        gt=0,
        description="reaper: a queued job not claimed this long after its message was sent "
        "(or never sent) gets its message sent again.",
    )
    reaper_interval_s: float = Field(30.0, gt=0, description="how often the reaper runs.")
    reaper_in_api: bool = Field(
        False,
        description="run the reaper (service.reaper.reap_once) in the API process every "
        "reaper_interval_s; otherwise the worker runs it.",
    )
    cancel_grace_s: float = Field(
        10.0,
        ge=0,
        description="worker: after a cancel, how long the trainer's process group has between "
        "SIGTERM and SIGKILL.",
    )
    multinode_launcher: Literal["workers", "ssh"] = Field(
        "workers",
        description="multi-node jobs (resources.nodes > 1): `workers` places the job on N "
        "registered workers of distinct hosts, each starting its own node (torchrun c10d "
        "rendezvous, no SSH); `ssh` lets the claiming worker start the other nodes over "
        "ssh_command from its hostfile. API and workers must agree.",
    )
    worker_host: str | None = Field(
        None,
        description="worker: this box's identity in the worker registry and its own queue "
        "(`<default_queue>.host.<worker_host>`); a gang takes at most one worker per host. "
        "Default: the host name.",
    )
    gang_start_timeout_s: float = Field(
        120.0,
        gt=0,
        description="multi-node jobs: node 0 gives the attempt up (and the job is requeued) when a "
        "reserved node has not started this long after the placement.",
    )
    hostfile: Path | None = Field(
        None,
        description="worker, multi-node jobs with multinode_launcher ssh: DeepSpeed-style hostfile, one "
        "`host slots=N` line per GPU box (# comments). The claiming worker's box is node 0; the "
        "next hosts in file order with enough slots are nodes 1..M-1. Loopback names (and this "
        "box's hostname or node_addr) are launched locally; other hosts over ssh_command.",
    )
    node_addr: str | None = Field(
        None,
        description="worker, multi-node jobs: this box's address as the other nodes reach it "
        "(the rendezvous endpoint when this box is node 0; registered in the worker registry). "
        "Default: the worker_host (launcher workers), or 127.0.0.1 when every node is local, "
        "else the box's host name as the hostfile spells it (launcher ssh).",
    )
    master_port: int = Field(
        29500,
        ge=0,
        le=65535,
        description="worker, multi-node jobs: the rendezvous port on node 0 (open it between the "
        "boxes); 0 picks a free port. Single-node jobs always use a free port.",
    )
    ssh_command: str = Field(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        description="worker, multi-node jobs: how node 0's worker starts the launcher of a "
        "non-local node (`<ssh_command> -tt <host> 'cd <cwd> && exec env ... <argv>'`).",
    )
    idempotency_ttl_s: float = Field(
        24 * 3600.0, gt=0, description="how long an Idempotency-Key is remembered."
    )
    session_max_age_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="dashboard: how long the sign-in cookie (it holds the token, HttpOnly, "
        "SameSite=Strict) lasts before the browser must sign in again.",
    )
    sse_poll_interval_s: float = Field(0.5, gt=0, description="how often an SSE stream polls for new events.")
    sse_keepalive_s: float = Field(15.0, gt=0, description="SSE comment line sent when idle this long.")
    db_pool_size: int = Field(10, ge=1, description="connection pool size of the API process.")
    sqlite_busy_timeout_ms: int = Field(30_000, ge=0, description="SQLite busy_timeout per connection.")
    keep_checkpoints: int | None = Field(
        None,
        ge=0,
        description="retention: DeepSpeed tags kept per ended job (the newest; exports are always "
        "kept). When set, the API prunes ended jobs to it every notify_interval_s; unset keeps "
        "what the trainer kept. `sgmim prune JOB --keep K` prunes one job.",
    )
    webhook_url: str | None = Field(
        None, description="POSTed when any job reaches a terminal state (a spec's `webhook` wins)."
    )
    webhook_secret: str | None = Field(
        None,
        description="HMAC-SHA256 key: each webhook carries `X-SGMIM-Signature: sha256=<hex of "
        "HMAC(secret, body)>`.",
    )
    webhook_attempts: int = Field(5, ge=1, le=50, description="deliveries tried before giving up.")
    webhook_backoff_s: float = Field(
        2.0, gt=0, description="wait before the first retry, doubled after each failure."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="timeout of one webhook request.")
    notify_interval_s: float = Field(
        2.0, gt=0, description="how often the API looks for ended jobs to announce and prune."
    )
    max_study_cells: int = Field(
        256, ge=1, description="the most cells (rows × seeds) a posted study may have; each is a chain "
        "of three jobs.",
    )
    study_interval_s: float = Field(
        2.0, gt=0, description="how often the API advances the active studies (/api/v1/studies): "
        "submits each cell's next job once its parent has succeeded.",
    )
    migrate_on_start: bool = Field(True, description="apply Alembic migrations when the app starts.")

    @field_validator("api_tokens", "data_roots", "allowed_hosts", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("data_dir", "artifact_root", "token_file", "hostfile", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    # Derived values ---------------------------------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{self.data_dir / 'sgmim.db'}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_artifact_root(self) -> Path:
        return self.artifact_root or self.data_dir / "artifacts"

    @property
    def broker_dir(self) -> Path:
        """Folder of the filesystem broker (queue/, processed/, control/)."""
        return self.data_dir / "broker"

    def run_dir(self, job_id: str) -> Path:
        return self.resolved_artifact_root / "jobs" / job_id

    def allowed_data_roots(self) -> list[Path]:
        """Where a spec's data paths may point: data_roots (default: home and data_dir) and the
        artifact root (another job's export as an init file)."""
        roots = self.data_roots or [Path.home(), self.data_dir]
        return [Path(os.path.abspath(root.expanduser())) for root in [*roots, self.resolved_artifact_root]]

    @cached_property
    def configured_tokens(self) -> list[str]:
        """Tokens from api_tokens and token_file (read once)."""
        tokens = list(self.api_tokens)
        if self.token_file is not None:
            for line in self.token_file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    tokens.append(line)
        return tokens


def get_settings() -> Settings:
    return Settings()
