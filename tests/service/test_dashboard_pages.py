"""The dashboard's server-rendered pages (TestClient, both databases): paging, filters, the
live-refresh fragment, escaping, the workers page, the job page's sections, the submit errors."""

from __future__ import annotations

import datetime as dt
import html
import re

import yaml
from sqlalchemy import update

from service.db.models import Worker, utcnow
from tests.service.conftest import PRETRAIN, Api

OLDER = re.compile(r'id="older" href="([^"]+)"')
ROW = re.compile(r'<tr data-id="([0-9a-z]+)"')


def test_jobs_pages_walk_by_cursor_and_filter(api: Api):
    ids = [api.submit({**PRETRAIN, "name": f"walk-{i}"})["id"] for i in range(120)]
    seen, path, pages = [], "/", 0
    while path:
        page = api.client.get(path)
        assert page.status_code == 200
        seen += ROW.findall(page.text)
        found = OLDER.search(page.text)
        path = "/" + html.unescape(found.group(1)) if found else ""
        pages += 1
    assert pages == 3 and seen == ids[::-1]  # newest first, each job once
    api.client.post(f"/api/v1/jobs/{ids[5]}/cancel")
    only = api.client.get("/", params={"status": "cancelled", "kind": "pretrain"}).text
    assert ROW.findall(only) == [ids[5]]
    fragment = api.client.get("/", params={"q": "walk-11", "rows": 1}).text
    assert fragment.lstrip().startswith("<tbody") and "<html" not in fragment
    assert set(ROW.findall(fragment)) == {ids[11], *ids[110:120]}
    odd = api.client.get("/", params={"status": "nonsense", "cursor": "not a cursor!"})
    assert odd.status_code == 200 and "unknown status" in odd.text and "not valid any more" in odd.text


def test_user_text_is_escaped(api: Api):
    evil = "<script>alert(1)</script>"
    job = api.submit({**PRETRAIN, "name": evil})
    for path in ("/", f"/jobs/{job['id']}", f"/compare?jobs={job['id']}"):
        text = api.client.get(path).text
        assert evil not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path


def test_job_page_sections_and_lineage(api: Api):
    parent = api.submit({**PRETRAIN, "name": "the-parent"})
    api.succeed(parent["id"])
    api.repo.record_checkpoint(parent["id"], "encoder", "encoder", 10, 2048, "export/encoder.safetensors")
    api.repo.set_evaluation(parent["id"], {"task": "depth", "dataset": "synthetic", "metrics": {"rmse": 0.5}})
    child = api.submit(
        {
            "kind": "finetune",
            "name": "the-child",
            "parent": {"job_id": parent["id"]},
            "config": {"schedule": {"epochs": 1}},
        }
    )
    page = api.client.get(f"/jobs/{parent['id']}").text
    assert f'href="/jobs/{child["id"]}">the-child' in page
    assert f'href="/api/v1/jobs/{parent["id"]}/checkpoints/encoder"' in page and "2.0 KiB" in page
    assert "rmse" in page and "queued → <span" in page and "kind: pretrain" in page
    child_page = api.client.get(f"/jobs/{child['id']}").text
    assert f'parent: <a href="/jobs/{parent["id"]}">the-parent</a>' in child_page
    missing = api.client.get("/jobs/0000000000000000")
    assert missing.status_code == 404 and "There is no job" in missing.text
    # the compare view finds a pretraining job's evaluation among its descendants
    compare = api.client.get(f"/compare?jobs={parent['id']},nope").text
    assert "this job" in compare and "no job &#39;nope&#39;" in compare


def test_workers_page_shows_busy_workers_and_the_queue_in_order(api: Api):
    running = api.submit({**PRETRAIN, "name": "busy-job", "resources": {"gpus": 4, "gpu_type": "h200"}})
    assert api.repo.claim_job(running["id"], "gpu-box-7") == 1
    low = api.submit({**PRETRAIN, "name": "low", "priority": 1})
    high = api.submit({**PRETRAIN, "name": "high", "priority": 9})
    page = api.client.get("/workers").text
    busy = page[page.index('id="busy"') : page.index('id="recent"')]
    assert "gpu-box-7" in busy and "busy-job" in busy and "4 × h200" in busy and ">alive<" in busy
    queue = page[page.index('id="queue"') :]
    assert queue.index(high["id"]) < queue.index(low["id"])


def test_workers_page_lists_the_registry_idle_busy_and_gone(api: Api):
    api.repo.register_worker("idle-w@box-1", "box-1", "10.0.0.1", 2, ["h200"], ["sgmim", "sgmim.h200"])
    api.repo.register_worker("busy-w@box-2", "box-2", "10.0.0.2", 0, [], ["sgmim"])
    api.repo.register_worker("gone-w@box-3", "box-3", "10.0.0.3", 0, [], ["sgmim"])
    job = api.submit({**PRETRAIN, "name": "on-box-2"})
    assert api.repo.claim_job(job["id"], "busy-w@box-2") == 1
    with api.repo.db.write() as s:  # stopped heartbeating an hour ago
        s.execute(update(Worker).where(Worker.name == "gone-w@box-3")
                  .values(heartbeat_at=utcnow() - dt.timedelta(hours=1)))
    page = api.client.get("/workers").text
    table = page[page.index('id="registered"') : page.index('id="busy"')]
    rows = {name: table[table.index(name) :].split("</tr>")[0] for name in ("idle-w", "busy-w", "gone-w")}
    assert "box-1 (10.0.0.1)" in rows["idle-w"] and "2 × h200" in rows["idle-w"]
    assert "sgmim, sgmim.h200" in rows["idle-w"] and "idle" in rows["idle-w"] and ">alive<" in rows["idle-w"]
    assert f'href="/jobs/{job["id"]}"' in rows["busy-w"] and "(attempt 1)" in rows["busy-w"]
    assert ">gone<" in rows["gone-w"] and ">alive<" not in rows["gone-w"]


def test_submit_reports_yaml_and_field_errors_with_lines(api: Api):
    bad_yaml = api.client.post("/submit", json={"spec_yaml": "kind: pretrain\nname: [unclosed\n"})
    assert bad_yaml.status_code == 422 and bad_yaml.json()["detail"][0]["msg"].startswith("not valid YAML")
    spec = "kind: pretrain\nname: x\nconfig:\n  schedule:\n    epochs: 1\n  nonsense: 3\n"
    r = api.client.post("/submit", json={"spec_yaml": spec})
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "config", "nonsense"] and error["line"] == 6
    parent = api.client.post(
        "/submit", json={"spec_yaml": "kind: finetune\nname: f\nparent: {job_id: nope}\n"}
    )
    assert parent.status_code == 422 and parent.json()["detail"][0]["loc"] == ["body", "parent", "job_id"]
    assert api.client.post("/submit", json={"yaml": 1}).status_code == 422
    assert api.client.post("/submit", json={"spec_yaml": "- a list"}).status_code == 422


def test_submit_refuses_yaml_keys_that_are_not_text(api: Api):
    for extra, loc in (("1: 2", [1]), ("2026-01-01: x", ["2026-01-01"]),
                       ("config: {schedule: {epochs: 1, 7: x}}", ["config", "schedule", 7])):
        r = api.client.post("/submit", json={"spec_yaml": f"kind: pretrain\nname: t\n{extra}\n"})
        assert r.status_code == 422, (extra, r.text)
        [error] = r.json()["detail"]
        assert error == {"loc": ["body", *loc], "msg": "this key is not text; quote it",
                         "type": "string_invalid", "line": 3}


def test_submit_refuses_yaml_whose_aliases_expand_without_bound(api: Api):
    # 450 bytes of anchors and aliases that expand to a million values ("billion laughs")
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    text = "kind: pretrain\nname: t\n" + "\n".join(lines) + "\n"
    r = api.client.post("/submit", json={"spec_yaml": text})
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body"] and "more than 100000 values (an alias" in error["msg"], error
    # a spec that shares a block through an anchor is fine
    shared = ("kind: pretrain\nname: t\nconfig:\n  optim: {betas: &pair [0.9, 0.95]}\n"
              "  data: {augment: {crop_scale: *pair}}\n  schedule: {epochs: 1}\n")
    assert api.client.post("/submit", json={"spec_yaml": shared}).status_code == 201


def test_submit_reads_yaml_numbers_as_the_cli_does(api: Api):
    text = "kind: pretrain\nname: t\nconfig:\n  optim: {eps: 1e-8, base_lr: 2e-4}\n  schedule: {epochs: 1}\n"
    r = api.client.post("/submit", json={"spec_yaml": text})
    assert r.status_code == 201, r.text
    optim = api.repo.get(r.json()["id"]).spec["config"]["optim"]
    assert (optim["eps"], optim["base_lr"]) == (1e-8, 2e-4)


def test_submit_reports_the_error_types_of_the_api(api: Api):
    text = "kind: pretrain\nname: t\npriority: 99\nconfig: {schedule: {epochs: 1, steps: 2}}\n"
    r = api.client.post("/submit", json={"spec_yaml": text})
    api_errors = api.client.post("/api/v1/jobs", json=yaml.safe_load(text)).json()["detail"]
    assert r.status_code == 422
    assert [(e["loc"], e["type"]) for e in r.json()["detail"]] == [(e["loc"], e["type"]) for e in api_errors]
    assert {e["type"] for e in api_errors} == {"less_than_equal", "spec_rule"}


def test_jobs_page_ignores_a_search_the_database_cannot_hold(api: Api):
    api.submit({**PRETRAIN, "name": "kept"})
    for rows in ("0", "1"):
        r = api.client.get("/", params={"q": "a\x00b", "rows": rows})
        assert r.status_code == 200, r.text
        assert "kept" in r.text
    assert "search text with a NUL character ignored" in api.client.get("/", params={"q": "a\x00b"}).text


def test_a_bad_query_on_a_page_answers_a_page(api: Api):
    for url, problem in (("/?q=" + "x" * 200, "q: String should have at most 128 characters"),
                         ("/?rows=maybe", "rows: Input should be a valid boolean"),
                         ("/compare?jobs=" + "a," * 600, "jobs: String should have at most 1024 characters"),
                         ("/signin?next=/" + "x" * 3000, "next: String should have at most 2048 characters")):
        r = api.client.get(url, headers={"accept": "text/html"})
        assert r.status_code == 422, url
        assert r.headers["content-type"].startswith("text/html"), url
        assert "Bad request" in r.text and problem in html.unescape(r.text), (url, r.text)
    # a script (no text/html in Accept) still gets the JSON errors
    r = api.client.get("/?q=" + "x" * 200)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "q"]
