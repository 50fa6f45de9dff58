"""The web dashboard, served by the API process: server-rendered pages (Jinja2) with a little
plain JavaScript (static/), charts by plotly.js from the installed `plotly` package.

    /                jobs, filters, paging, live refresh       jobs.py
    /jobs/{id}       one job: curves, log, timeline, artifacts  jobs.py
    /compare?jobs=   curves overlaid, evaluations side by side  compare.py
    /submit          a YAML spec, errors by field path          submit.py
    /workers         busy workers and the queue                 workers.py
    /studies         studies; /studies/{name}: cells, results   studies.py
    /signin, /signout                                           session.py
    /docs, /vendor/*, /static/*                                 assets.py
"""

from __future__ import annotations

from fastapi import FastAPI

from service.web import assets, compare, jobs, session, studies, submit, workers


def install(app: FastAPI) -> None:
    app.mount("/static", assets.static_files(), name="static")
    app.include_router(assets.make_router())
    for module in (session, jobs, compare, submit, workers, studies):
        app.include_router(module.router)
