"""Dashboard benchmark: the jobs page with 10,000 jobs (first page, filters, name search, the
live-refresh fragment, a walk through every page by its "Older" links) and the downsampled
curve of a 100,000-point metric, through a real uvicorn process.

    .venv/bin/python benchmarks/dashboard_bench.py --db sqlite
    .venv/bin/python benchmarks/dashboard_bench.py --db postgres   # a fresh database on 127.0.0.1:5432

Writes the "Dashboard" section of benchmarks/RESULTS.md (rows of the other database are kept).
One client, sequential requests on a keep-alive connection, on the same machine as the server.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import RESULTS, today  # noqa: E402
from benchmarks.service_bench import PG_ADMIN, Client, fill_jobs, machine, percentile, start_server  # noqa: E402
from service.db import migrate  # noqa: E402
from service.db.repo import JobRepo  # noqa: E402
from service.db.session import Database  # noqa: E402

OLDER = re.compile(r'id="older" href="([^"]+)"')


def timed(client: Client, path: str, n: int) -> dict[str, float]:
    lat, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        status, body = client.request("GET", path)
        lat.append(time.perf_counter() - t)
        assert status == 200, (status, body[:200])
        size = len(body)
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "bytes": size, "n": n}


def walk_pages(client: Client) -> dict[str, float]:
    lat, path, pages, rows = [], "/", 0, 0
    while path:
        t = time.perf_counter()
        status, body = client.request("GET", path)
        lat.append(time.perf_counter() - t)
        text = body.decode()
        pages += 1
        rows += text.count("<tr data-id=")
        found = OLDER.search(text)
        path = "/" + html.unescape(found.group(1)) if found else ""
    return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "pages": pages, "rows": rows}


def long_curve(repo: JobRepo, points: int) -> str:
    job_id = repo.submit(
        {"kind": "pretrain", "name": "long-curve", "priority": 5, "max_restarts": 0},
        queue="sgmim",
        run_dir_root="/tmp/bench-runs",
    ).job.id
    batch = []
    for step in range(1, points + 1):
        batch.append({"name": "loss", "value": 0.3 + 2.0 / (1 + step / 500), "step": step})
        if len(batch) == 20_000:
            repo.append_metrics(job_id, batch)
            batch = []
    repo.append_metrics(job_id, batch)
    return job_id


def full_metrics(client: Client, job_id: str) -> dict[str, float]:
    t, after, size = time.perf_counter(), 0, 0
    while True:
        status, body = client.request(
            "GET", f"/api/v1/jobs/{job_id}/metrics?names=loss&limit=10000&after={after}"
        )
        assert status == 200
        size += len(body)
        page = json.loads(body)
        if page["next_after"] is None:
            break
        after = page["next_after"]
    return {"seconds": time.perf_counter() - t, "bytes": size}


def write_section(db: str, rows: list[tuple[str, str]], note: str) -> None:
    text = RESULTS.read_text()
    header = "## Dashboard"
    intro = (
        f"{header}\n\n`.venv/bin/python benchmarks/dashboard_bench.py --db sqlite|postgres`. One uvicorn "
        "process, 10,000 jobs; one client, sequential requests on a keep-alive connection, on the same "
        "cores.\n\n| machine | date | db | measure | value |\n|---|---|---|---|---|\n"
    )
    match = re.search(rf"^{header}\n.*?(?=^## |\Z)", text, re.S | re.M)
    old = match.group(0) if match else ""
    kept = [
        line
        for line in old.splitlines()
        if line.startswith("| ")
        and f"| {db} |" not in line
        and not line.startswith("| machine")
        and not line.startswith("|---")
    ]
    notes = [
        line for line in old.splitlines() if line.startswith("- ") and not line.startswith(f"- **{db}**")
    ]
    new_rows = [f"| {machine()} | {today()} | {db} | {m} | {v} |" for m, v in rows]
    block = (
        intro
        + "\n".join(sorted(kept + new_rows))
        + "\n\n"
        + "\n".join(sorted([*notes, f"- **{db}**: {note}"]))
    )
    text = text.replace(old, block + "\n\n") if old else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text.rstrip() + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=100_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    pg_name = None
    if args.db == "sqlite":
        url = f"sqlite:///{work / 'sgmim.db'}"
    else:
        import psycopg

        pg_name = f"sgmim_bench_{secrets.token_hex(4)}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + pg_name
    db = Database(url)
    migrate.upgrade(db.engine)
    repo = JobRepo(db)
    fill_jobs(repo, args.jobs)
    curve_job = long_curve(repo, args.points)
    load_before = os.getloadavg()[0]
    proc, port = start_server(work, url)
    try:
        client = Client(port)
        timed(client, "/", 5)  # warm-up
        first = timed(client, "/", 100)
        filtered = timed(client, "/?status=failed&kind=pretrain", 100)
        search = timed(client, "/?q=filler-99", 50)
        fragment = timed(client, "/?rows=1", 100)
        walk = walk_pages(client)
        series = timed(client, f"/api/v1/jobs/{curve_job}/series?points=2000", 20)
        whole = full_metrics(client, curve_job)
        job_page = timed(client, f"/jobs/{curve_job}", 50)
    finally:
        proc.terminate()
        proc.wait(30)
        db.dispose()
        shutil.rmtree(work, ignore_errors=True)
        if pg_name:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    ms = lambda r: f"{r['p50'] * 1e3:.1f} ms / {r['p99'] * 1e3:.1f} ms"  # noqa: E731
    rows = [
        (f"jobs page p50 / p99, first 50 of {args.jobs} jobs ({first['bytes'] // 1024} KiB)", ms(first)),
        ("jobs page, status + kind filter", ms(filtered)),
        ("jobs page, name search (`q=filler-99`, a substring scan)", ms(search)),
        ("live-refresh fragment (`?rows=1`)", ms(fragment)),
        (f"every page by its Older link ({walk['pages']} pages, {walk['rows']} rows), per page", ms(walk)),
        (
            f"`/series` of a {args.points:,}-point curve, 2000 buckets ({series['bytes'] // 1024} KiB)",
            ms(series),
        ),
        (
            f"the same curve whole through `/metrics` (for scale: {whole['bytes'] // 1024} KiB)",
            f"{whole['seconds'] * 1e3:.0f} ms",
        ),
        ("job page (server render)", ms(job_page)),
    ]
    note = f"1-minute load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after."
    write_section(args.db, rows, note)
    for measure, value in rows:
        print(f"{measure}: {value}")


if __name__ == "__main__":
    main()
