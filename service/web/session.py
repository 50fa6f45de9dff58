"""/signin and /signout: the browser presents a token once and keeps it in an HttpOnly cookie."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from service.auth import SESSION_COOKIE
from service.deps import SettingsDep
from service.web.templating import page

router = APIRouter(include_in_schema=False)

MAX_FORM_BYTES = 16_384


def local_target(value: str | None) -> str:
    """Where to go after signing in: a path on this server only (never another site)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    return value


@router.get("/signin")
def sign_in_form(request: Request, next: Annotated[str | None, Query(max_length=2048)] = None) -> Response:
    if not request.app.state.auth.enabled:
        return RedirectResponse(local_target(next), status_code=303)
    return page(request, "signin.html", {"next": local_target(next), "error": None, "signin_page": True})


@router.post("/signin")
async def sign_in(request: Request, settings: SettingsDep) -> Response:
    """Form fields `token` and `next`. A good token becomes the session cookie (HttpOnly: no
    script reads it; SameSite=Strict: no other site's request carries it)."""
    body = (await request.body())[:MAX_FORM_BYTES]
    form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    token = form.get("token", [""])[0].strip()
    target = local_target(form.get("next", ["/"])[0])
    auth = request.app.state.auth
    if not auth.enabled:
        return RedirectResponse(target, status_code=303)
    if not token or not await auth.check(token):
        error = "That token is not valid." if token else "Enter a token."
        return page(
            request, "signin.html", {"next": target, "error": error, "signin_page": True}, status_code=401
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(settings.session_max_age_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/signout")
def sign_out() -> Response:
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
