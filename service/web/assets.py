"""Assets served by this process, so that the dashboard and /docs work without a network:
the charting library (plotly.js, from the installed `plotly` package), Swagger UI (from the
installed `fastapi-offline` package) and our own CSS/JS (`/static`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from service.web.templating import HERE, page

CACHE = {"Cache-Control": "public, max-age=86400"}


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {name} package is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


VENDOR = {
    "plotly.min.js": ("plotly", "package_data/plotly.min.js"),
    "swagger-ui-bundle.js": ("fastapi_offline", "static/swagger-ui-bundle.js"),
    "swagger-ui.css": ("fastapi_offline", "static/swagger-ui.css"),
}


def vendor_files() -> dict[str, Path]:
    return {name: package_dir(package) / path for name, (package, path) in VENDOR.items()}


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def make_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    files = vendor_files()
    for path in files.values():
        if not path.is_file():
            raise RuntimeError(f"dashboard asset missing: {path} (reinstall the package that ships it)")

    @router.get("/vendor/{name}")
    def vendor(name: str) -> Response:
        path = files.get(name)
        if path is None:
            return Response(status_code=404)
        return FileResponse(path, headers=CACHE)

    @router.get("/docs")
    def swagger_ui(request: Request) -> Response:
        """Swagger UI on /openapi.json; its requests carry the dashboard's CSRF header, so that
        'Try it out' works for a browser signed in by cookie."""
        return page(request, "docs.html", {})

    return router
