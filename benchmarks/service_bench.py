"""Service benchmark: submit and list latency through a real uvicorn process, metric ingest
(the worker's write path, `JobRepo.append_metrics`) and metric query (HTTP) rates.

    .venv/bin/python benchmarks/service_bench.py --db sqlite
    .venv/bin/python benchmarks/service_bench.py --db postgres   # a fresh database on 127.0.0.1:5432

Writes/updates the "Service" section of benchmarks/RESULTS.md (rows of the other database are
kept). The load generator runs on the same machine as the server (they share the CPU cores),
one thread per client with a keep-alive http.client connection.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from service.db import migrate  # noqa: E402
from service.db.models import Job, StatusEvent, utcnow  # noqa: E402
from service.db.repo import JobRepo, new_job_id  # noqa: E402
from service.db.session import Database  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
SPEC = {"kind": "pretrain", "name": "bench", "config": {"schedule": {"epochs": 1}}}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


class Client:
    """A keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        hdrs = {"content-type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        try:
            self.conn.request(method, path, body=body, headers=hdrs)
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.conn.request(method, path, body=body, headers=hdrs)
            resp = self.conn.getresponse()
        return resp.status, resp.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, db_url: str, workers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    """`sgmim serve` (python -m service) with `workers` API processes, access log off."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGMIM_")}
    env.update(SGMIM_DATA_DIR=str(data_dir), SGMIM_DATABASE_URL=db_url, SGMIM_API_WORKERS=str(workers),
               SGMIM_ACCESS_LOG="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if Client(port).request("GET", "/readyz")[0] == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"uvicorn exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("uvicorn did not start")


def run_clients(n: int, work) -> list[float]:
    """Run `work(client, index, latencies)` on n threads; returns all latencies (s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def thread(i: int) -> None:
        client = Client(PORT)
        local: list[float] = []
        barrier.wait()
        work(client, i, local)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def bench_submit_closed(clients: int, per_client: int) -> dict[str, float]:
    body = json.dumps(SPEC).encode()

    def work(client: Client, i: int, out: list[float]) -> None:
        for _ in range(per_client):
            t = time.perf_counter()
            status, _ = client.request("POST", "/api/v1/jobs", body)
            out.append(time.perf_counter() - t)
            assert status == 201, status

    t0 = time.perf_counter()
    lat = run_clients(clients, work)
    wall = time.perf_counter() - t0
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "rate": len(lat) / wall, "n": len(lat)}


def bench_submit_paced(clients: int, total_rate: float, seconds: float) -> dict[str, float]:
    """Open loop: each client sends on a fixed schedule; latency counts from the scheduled time
    (no coordinated omission)."""
    body = json.dumps(SPEC).encode()
    interval = clients / total_rate
    per_client = int(seconds / interval)

    def work(client: Client, i: int, out: list[float]) -> None:
        start = time.perf_counter() + interval * i / clients
        for k in range(per_client):
            due = start + k * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            status, _ = client.request("POST", "/api/v1/jobs", body)
            out.append(time.perf_counter() - due)
            assert status == 201, status

    lat = run_clients(clients, work)
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat)}


def fill_jobs(repo: JobRepo, total: int) -> None:
    """Bulk-insert jobs (mixed statuses and kinds) until the table holds `total`."""
    existing = len(repo.list(limit=total + 1))
    statuses = ["succeeded"] * 6 + ["failed", "cancelled", "queued", "running"]
    kinds = ["pretrain", "pretrain", "finetune", "evaluate"]
    rows, events = [], []
    now = utcnow()
    for i in range(max(0, total - existing)):
        job_id = new_job_id()
        rows.append(
            dict(
                id=job_id,
                kind=kinds[i % 4],
                name=f"filler-{i}",
                spec={**SPEC, "name": f"filler-{i}"},
                status=statuses[i % 10],
                priority=5,
                max_restarts=2,
                restarts=0,
                attempt=1,
                queue="sgmim",
                run_dir=f"/runs/{job_id}",
                last_seq=1,
                created_at=now,
                updated_at=now,
                last_metrics={"loss": 0.5, "lr": 1e-4},
                step=100,
                total_steps=1000,
                epoch=1.0,
            )
        )
        events.append(
            dict(job_id=job_id, seq=1, time=now.timestamp(), status="queued", previous=None, attempt=0)
        )
    with repo.db.write() as s:
        for k in range(0, len(rows), 1000):
            s.execute(insert(Job), rows[k : k + 1000])
            s.execute(insert(StatusEvent), events[k : k + 1000])


def bench_list(clients: int, requests: int, query: str) -> dict[str, float]:
    def work(client: Client, i: int, out: list[float]) -> None:
        for _ in range(requests):
            t = time.perf_counter()
            status, body = client.request("GET", "/api/v1/jobs" + query)
            out.append(time.perf_counter() - t)
            assert status == 200, (status, body[:200])

    lat = run_clients(clients, work)
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat)}


def bench_list_walk() -> dict[str, float]:
    client = Client(PORT)
    lat, cursor, seen = [], None, 0
    while True:
        path = "/api/v1/jobs?limit=200" + (f"&cursor={cursor}" if cursor else "")
        t = time.perf_counter()
        status, body = client.request("GET", path)
        lat.append(time.perf_counter() - t)
        page = json.loads(body)
        seen += len(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "n": len(lat), "jobs": seen}


def bench_ingest(repo: JobRepo, points: int, batch: int, writers: int) -> dict[str, float]:
    job_ids = [
        repo.submit({**SPEC, "kind": "pretrain"}, queue="sgmim").job.id
        for _ in range(writers)
    ]
    per_writer = points // writers

    def write(job_id: str) -> None:
        for start in range(0, per_writer, batch):
            now = time.time()
            repo.append_metrics(
                job_id,
                [
                    {
                        "step": i // 2,
                        "epoch": i / 1e4,
                        "name": "loss" if i % 2 else "lr",
                        "value": 1.0 / (i + 1),
                        "time": now,
                    }
                    for i in range(start, min(per_writer, start + batch))
                ],
            )

    threads = [threading.Thread(target=write, args=(j,)) for j in job_ids]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"rate": per_writer * writers / wall, "job": job_ids[0], "points": per_writer}


def bench_query(job_id: str, limit: int) -> dict[str, float]:
    client = Client(PORT)
    lat, after, total = [], 0, 0
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        status, body = client.request("GET", f"/api/v1/jobs/{job_id}/metrics?after={after}&limit={limit}")
        lat.append(time.perf_counter() - t)
        page = json.loads(body)
        total += len(page["items"])
        if page["next_after"] is None:
            break
        after = page["next_after"]
    wall = time.perf_counter() - t0
    return {"rate": total / wall, "p50": percentile(lat, 50), "p99": percentile(lat, 99), "points": total}


def process_cpu_s(pid: int) -> float:
    """CPU seconds of the server: the process and its children (the API worker processes)."""
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU container ({cpu}), Python {platform.python_version()}"


def write_results(path: Path, db: str, rows: list[tuple[str, str, str]], notes: list[str]) -> None:
    """Replace this db's rows in the "## Service" section (other sections and the other db kept)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    header = "## Service"
    date = dt.date.today().isoformat()
    m = re.search(r"^## Service\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    old_rows: list[str] = []
    old_notes: dict[str, str] = {}
    if m:
        for line in m.group(1).splitlines():
            if line.startswith("| ") and not line.startswith("| machine") and not line.startswith("|---"):
                cells = [c.strip() for c in line.strip("|").split("|")]
                if len(cells) == 6 and cells[2] != db:
                    old_rows.append(line)
            nm = re.match(r"^- \*\*(\w+)\*\*: (.*)$", line)
            if nm and nm.group(1) != db:
                old_notes[nm.group(1)] = line
    new_rows = [
        f"| {machine()} | {date} | {db} | {metric} | {value} | {target} |" for metric, value, target in rows
    ]
    all_rows = sorted(old_rows + new_rows, key=lambda r: [c.strip() for c in r.strip("|").split("|")][2])
    note_lines = [*old_notes.values(), f"- **{db}**: " + " ".join(notes)]
    section = "\n".join(
        [
            header,
            "",
            "`.venv/bin/python benchmarks/service_bench.py --db sqlite|postgres`. `sgmim serve` with",
            "`--api-workers` API processes (each note says how many; access log off), embedded filesystem",
            "broker, wake-up messages sent by the dispatcher; the load generator (threads, keep-alive",
            "http.client) shares the same cores. Submit/list/query go through HTTP; ingest is the worker's",
            "write path (`JobRepo.append_metrics`, batches of 500 points, straight to the database).",
            "",
            "| machine | date | db | metric | value | target |",
            "|---|---|---|---|---|---|",
            *all_rows,
            "",
            *sorted(note_lines),
            "",
        ]
    )
    text = text[: m.start()] + section + "\n" + text[m.end() :] if m else text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


PORT = 0


def main() -> None:
    global PORT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgres"], required=True)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--submits", type=int, default=2000, help="closed-loop submits in total")
    ap.add_argument("--paced-rate", type=float, default=100.0, help="open-loop submits/s (all clients)")
    ap.add_argument("--paced-seconds", type=float, default=10.0)
    ap.add_argument("--jobs", type=int, default=10_000, help="jobs in the DB for the list benchmark")
    ap.add_argument("--points", type=int, default=200_000, help="metric points to ingest")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--pg-admin-url", default=PG_ADMIN)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--api-workers", type=int, default=1, help="API processes (SGMIM_API_WORKERS)")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    data_dir = Path(tempfile.mkdtemp(prefix="sgmim-bench-"))
    pg_name = None
    if args.db == "sqlite":
        url = f"sqlite:///{data_dir / 'sgmim.db'}"
    else:
        import psycopg

        pg_name = f"sgmim_bench_{secrets.token_hex(4)}"
        with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        url = args.pg_admin_url.rsplit("/", 1)[0] + "/" + pg_name
    db = Database(url)
    migrate.upgrade(db.engine)
    repo = JobRepo(db)
    proc, PORT = start_server(data_dir, url, args.api_workers)
    results: dict[str, dict[str, float]] = {}
    try:
        print("warm-up ...", flush=True)
        bench_submit_closed(10, 20)
        print("submit, closed loop ...", flush=True)
        cpu0 = process_cpu_s(proc.pid)
        results["submit_closed"] = bench_submit_closed(args.clients, max(1, args.submits // args.clients))
        results["submit_closed"]["cpu_ms"] = (
            (process_cpu_s(proc.pid) - cpu0) / results["submit_closed"]["n"] * 1e3
        )
        print(results["submit_closed"], flush=True)
        print("submit, open loop ...", flush=True)
        results["submit_paced"] = bench_submit_paced(args.clients, args.paced_rate, args.paced_seconds)
        print(results["submit_paced"], flush=True)
        print(f"filling to {args.jobs} jobs ...", flush=True)
        fill_jobs(repo, args.jobs)
        results["list_first"] = bench_list(1, 300, "?limit=50")
        results["list_filtered"] = bench_list(1, 300, "?limit=50&status=failed&kind=pretrain")
        results["list_10c"] = bench_list(10, 50, "?limit=50")
        results["list_walk"] = bench_list_walk()
        for k in ("list_first", "list_filtered", "list_10c", "list_walk"):
            print(k, results[k], flush=True)
        print("ingest ...", flush=True)
        results["ingest_1"] = bench_ingest(repo, args.points, args.batch, 1)
        results["ingest_4"] = bench_ingest(repo, args.points, args.batch, 4)
        print(results["ingest_1"], results["ingest_4"], flush=True)
        results["query"] = bench_query(results["ingest_1"]["job"], 10_000)
        print("query", results["query"], flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
        db.dispose()
        if pg_name:
            import psycopg

            with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        shutil.rmtree(data_dir, ignore_errors=True)

    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    load_after = os.getloadavg()[0]
    busy = max(load_before, load_after) > (os.cpu_count() or 1)
    sc, sp = results["submit_closed"], results["submit_paced"]
    rows = [
        (
            f"submit p50 / p99, {args.clients} clients closed loop ({sc['rate']:.0f} submits/s, "
            f"server CPU {sc['cpu_ms']:.1f} ms per submit)",
            f"{ms(sc['p50'])} / {ms(sc['p99'])}",
            "≥ 500 submits/s, p99 < 250 ms",
        ),
        (
            f"submit p50 / p99, {args.clients} clients open loop at {args.paced_rate:.0f}/s",
            f"{ms(sp['p50'])} / {ms(sp['p99'])}",
            "p99 < 50 ms",
        ),
        (
            f"list p50 / p99, {args.jobs} jobs, first page of 50",
            f"{ms(results['list_first']['p50'])} / {ms(results['list_first']['p99'])}",
            "p99 < 100 ms",
        ),
        (
            "list p50 / p99, status+kind filter",
            f"{ms(results['list_filtered']['p50'])} / {ms(results['list_filtered']['p99'])}",
            "p99 < 100 ms",
        ),
        (
            "list p50 / p99, 10 concurrent clients",
            f"{ms(results['list_10c']['p50'])} / {ms(results['list_10c']['p99'])}",
            "p99 < 100 ms",
        ),
        (
            f"list p50 / p99 per page, cursor walk of all {results['list_walk']['jobs']} jobs (200/page)",
            f"{ms(results['list_walk']['p50'])} / {ms(results['list_walk']['p99'])}",
            "p99 < 100 ms",
        ),
        (
            f"metric ingest, 1 writer, batches of {args.batch}",
            f"{results['ingest_1']['rate']:,.0f} points/s",
            "≥ 20,000 points/s (Postgres)",
        ),
        (
            f"metric ingest, 4 writers, batches of {args.batch}",
            f"{results['ingest_4']['rate']:,.0f} points/s",
            "≥ 20,000 points/s (Postgres)",
        ),
        (
            f"metric query over HTTP, {results['query']['points']:,} points, pages of 10,000",
            f"{results['query']['rate']:,.0f} points/s (page p50 {ms(results['query']['p50'])}, "
            f"p99 {ms(results['query']['p99'])})",
            "—",
        ),
    ]
    notes = [
        f"closed loop: {sc['n']:.0f} submits, each client sends its next request when the last "
        "answered, so latency includes queueing behind the other clients (≈ clients / throughput);",
        f"open loop: {sp['n']:.0f} submits on a fixed schedule, latency from the scheduled time;",
        f"{args.api_workers} API process(es);",
        f"1-minute load average {load_before:.1f} before the run, {load_after:.1f} after"
        + (" (above the core count: other processes shared the CPU)." if busy else "."),
    ]
    for metric, value, target in rows:
        print(f"{args.db:8} {metric:90} {value:40} {target}")
    if not args.no_write:
        write_results(args.results, args.db, rows, notes)
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
