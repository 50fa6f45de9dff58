"""Terminal escape injection: the API refuses control characters in job names, and the CLI
escapes whatever the server sends (a row stored before that rule, a trainer's log line or
error) instead of printing it raw."""

from __future__ import annotations

import httpx

from service.db import open_repo
from service.settings import Settings
from sgmim.spec import parse_spec
from tests.cli.conftest import cli

NASTY = "a\nb\r\x1b[31m[red]x\u202e"


def test_the_api_refuses_control_characters_in_names(server):
    for name in ("a\nb\r\x1b[31m", "bell\x07", "tab\there", "del\x7f", "c1\x9b31m", "bidi\u202e"):
        r = httpx.post(f"{server['url']}/api/v1/jobs", json={"kind": "pretrain", "name": name})
        assert r.status_code == 422, (name, r.text)
        assert [e["loc"][-1] for e in r.json()["detail"]] == ["name"]
    ok = parse_spec({"kind": "pretrain", "name": "naïve run #3 (β=0.5) [ablation]"})
    assert ok.name == "naïve run #3 (β=0.5) [ablation]"


def test_the_cli_escapes_names_errors_and_log_lines(server):
    repo = open_repo(Settings(data_dir=server["state"]), migrate=False)
    try:
        spec = parse_spec({"kind": "pretrain", "name": "x"}).model_dump(mode="json")
        job_id = repo.submit({**spec, "name": NASTY}, queue="held-by-test").job.id
        attempt = repo.claim_job(job_id, "test")
        repo.append_logs(job_id, ["progress\r\x1b[2Kdone \x1b]0;title\x07"])
        repo.finish_job(job_id, attempt, "failed", "boom\x1b[2J\ron line 2\nline 3")
    finally:
        repo.db.dispose()
    env = {**server["env"], "COLUMNS": "300"}
    outputs = [cli(*args, env=env) for args in (("jobs",), ("show", job_id), ("logs", job_id))]
    for done in outputs:
        assert done.returncode == 0, done.stderr
        assert not any(ch in done.stdout for ch in "\x1b\r\x07\u202e"), repr(done.stdout)
    listing, show, logs = (done.stdout for done in outputs)
    assert "a\\nb\\r\\x1b[31m[red]x\\u202e" in listing, "escaped, and [red] is text, not a style"
    assert "a\\nb\\r\\x1b[31m[red]x\\u202e" in show
    error_lines = [line.strip() for line in show.splitlines()[-2:]]
    assert error_lines == ["error        boom\\x1b[2J\\ron line 2", "line 3"], "newlines kept in errors"
    assert "progress\\r\\x1b[2Kdone \\x1b]0;title\\x07" in logs


def test_shown_keeps_printable_text_and_newlines_only_when_asked():
    from sgmim.cli.client import markup, shown

    assert shown("plain text, ünïcode, 日本") == "plain text, ünïcode, 日本"
    assert shown("a\tb\nc") == "a\tb\\nc"
    assert shown("a\nb", lines=True) == "a\nb"
    assert markup("[bold]x\x1b") == "\\[bold]x\\x1b"
