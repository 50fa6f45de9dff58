"""Bad input from an outside tester's audit of the REST API (schemathesis and hand-made requests),
through the ASGI app on both databases: each answer is a clear 4xx that the OpenAPI document
states, never a 500, and no malformed value slips through with a meaning the caller did not
intend."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable

import pytest

from service.openapi import STUDY_EXAMPLE
from tests.service.conftest import PRETRAIN, Api

JOBS = "/api/v1/jobs"
JSON = {"content-type": "application/json"}


def test_patch_takes_json_booleans_only(api: Api):
    job = api.submit()
    for loose in (0, 1, "yes", "true"):
        r = api.client.patch(f"{JOBS}/{job['id']}", json={"archived": loose})
        assert r.status_code == 422, (loose, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "archived"]
    assert api.repo.get(job["id"]).archived_at is None


def test_a_body_that_is_not_json_names_the_body_on_every_route(api: Api):
    job = api.submit()
    for method, path in (("PATCH", f"{JOBS}/{job['id']}"), ("POST", JOBS)):
        r = api.client.request(method, path, content=b'{"note": ', headers=JSON)
        assert r.status_code == 422, r.text
        [error] = r.json()["detail"]
        # the position in the text is part of the message, not a field path
        assert error["loc"] == ["body"] and error["type"] == "json_invalid", (method, error)
        assert error["msg"].startswith("request body is not valid JSON: Expecting value"), (method, error)


@pytest.mark.parametrize(
    "form",
    [
        lambda day: day.strftime("%Y%m%d"),  # ISO 8601's basic form, not seconds since 1970
        lambda day: day.isoformat(),
        lambda day: f"{day.isoformat()}T00:00:00Z",
        lambda day: f"{day.isoformat()}T01:00:00+01:00",
    ],
    ids=["basic", "date", "utc", "offset"],
)
def test_since_reads_iso_dates(api: Api, form: Callable[[dt.date], str]):
    job = api.submit()
    today = dt.datetime.now(dt.UTC).date()
    for day, expected in ((today - dt.timedelta(days=1), [job["id"]]), (today + dt.timedelta(days=1), [])):
        r = api.client.get(JOBS, params={"since": form(day)})
        assert r.status_code == 200, r.text
        assert [j["id"] for j in r.json()["items"]] == expected, form(day)


@pytest.mark.parametrize("since", ["0.5", "20261130.5", "1e20", "-5", "2026", "yesterday"])
def test_since_refuses_what_is_not_an_iso_date(api: Api, since: str):
    api.submit()
    r = api.client.get(JOBS, params={"since": since})
    assert r.status_code == 422, (since, r.text)
    [error] = r.json()["detail"]
    assert error["loc"] == ["query", "since"] and "ISO 8601" in error["msg"], error


def test_since_with_an_unencoded_plus_says_so(api: Api):
    r = api.client.get(f"{JOBS}?since=2026-11-30T00:00:00+01:00")  # the + arrives as a space
    assert r.status_code == 422
    assert "%2B" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("path", "method", "allowed"),
    [
        ("/api/v1/jobs/{id}", "PUT", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("/api/v1/jobs", "DELETE", {"GET", "HEAD", "POST"}),
        ("/api/v1/studies", "PUT", {"GET", "HEAD", "POST"}),
        ("/api/v1/studies/{name}", "PUT", {"GET", "HEAD", "DELETE"}),
        # `prune` is also a {name} the download route answers
        ("/api/v1/jobs/{id}/checkpoints/prune", "PUT", {"GET", "HEAD", "POST"}),
        ("/api/v1/jobs/{id}/cancel", "GET", {"POST"}),
    ],
)
def test_405_lists_every_method_of_the_path(api: Api, path: str, method: str, allowed: set[str]):
    job = api.submit()
    r = api.client.request(method, path.format(id=job["id"], name="s"))
    assert r.status_code == 405, r.text
    assert r.json() == {"detail": "Method Not Allowed"}
    assert set(r.headers["allow"].split(", ")) == allowed


def test_series_names_are_limited_as_the_schema_says(api: Api):
    paths = api.client.get("/openapi.json").json()["paths"]
    names = {
        route: [p for p in paths[f"{JOBS}/{{job_id}}/{route}"]["get"]["parameters"] if p["name"] == "names"]
        for route in ("series", "metrics")
    }
    [[series], [metrics]] = names.values()
    assert series["schema"]["anyOf"][0]["pattern"] == metrics["schema"]["anyOf"][0]["pattern"]
    job = api.submit()
    for route in ("series", "metrics"):
        for bad in ("x" * 129, "loss,a\x00b"):
            r = api.client.get(f"{JOBS}/{job['id']}/{route}", params={"names": bad})
            assert r.status_code == 422, r.text
            [error] = r.json()["detail"]
            assert error["loc"] == ["query", "names"] and error["type"] == "string_pattern_mismatch", error


def test_the_patch_schema_states_that_a_note_holds_no_nul(api: Api):
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    note = schemas["JobPatch"]["properties"]["note"]["anyOf"][0]
    assert note["pattern"] == "^[^\\u0000]*$"
    job = api.submit()
    r = api.client.patch(f"{JOBS}/{job['id']}", json={"note": "a\x00b"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "note"]


def test_the_schema_of_a_study_base_job_leaves_out_what_the_cells_replace(api: Api):
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    for stage in ("pretrain", "finetune", "evaluate"):
        ref = schemas["StudySpec"]["properties"][stage]["$ref"]
        base = schemas[ref.rsplit("/", 1)[1]]
        assert base["required"] == ["kind"], stage
        for field in ("name", "parent"):  # any value
            assert base["properties"][field]["$ref"].endswith("/StudyValue"), (stage, field)
    study = copy.deepcopy({**STUDY_EXAMPLE, "seeds": [0]})
    for stage in ("pretrain", "finetune"):
        del study[stage]["name"]  # each cell names its jobs <study>-<cell>-<stage>
    study["evaluate"].update(name={"not": "read"}, parent={})  # and gives them their parent
    r = api.client.post("/api/v1/studies", json=study)
    assert r.status_code == 201, r.text
    pretrain = r.json()["cells"][0]["stages"]["pretrain"]["job_id"]
    assert api.repo.get(pretrain).name == f"{study['name']}-simmim-s0-pretrain"


def test_the_schema_says_a_pretrain_job_takes_no_parent(api: Api):
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["PretrainJob"]["properties"]["parent"]["type"] == "null"
    assert "anyOf" in schemas["FinetuneJob"]["properties"]["parent"]  # a child names its parent
    r = api.client.post(JOBS, json={**PRETRAIN, "parent": {"job_id": "01abc"}})
    assert r.status_code == 422
    assert r.json()["detail"] == [{"loc": ["body", "parent"], "msg": "a pretrain job takes no parent",
                                   "type": "spec_rule"}]


def test_pruning_a_running_job_says_what_was_refused(api: Api):
    job = api.submit()
    assert api.repo.claim_job(job["id"], "w") is not None
    r = api.client.post(f"{JOBS}/{job['id']}/checkpoints/prune")
    assert r.status_code == 409
    assert r.json() == {"detail": f"cannot prune the checkpoints of job {job['id']}: it is still running",
                        "status": "running", "job_id": job["id"]}
    deleted = api.client.delete(f"{JOBS}/{job['id']}").json()["detail"]
    assert deleted == f"cannot delete job {job['id']}: it is still running"
