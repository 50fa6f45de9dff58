#!/opt/venv/bin/python
"""Container health checks, installed in the images as `sgmim-healthcheck`.

    sgmim-healthcheck api      GET http://127.0.0.1:$SGMIM_PORT/readyz (database and broker
                               reachable), with the first configured bearer token: /readyz is
                               behind the token when tokens are configured.
    sgmim-healthcheck worker   Celery `ping` of this container's worker node (<name>@<hostname>);
                               the prefork parent process answers while a job trains.

Exit status 0 when healthy, 1 otherwise (with one line saying why); docker shows that line in
`docker inspect --format '{{json .State.Health}}' <container>`.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request


def first_token() -> str | None:
    for token in os.environ.get("SGMIM_API_TOKENS", "").split(","):
        if token.strip():
            return token.strip()
    path = os.environ.get("SGMIM_TOKEN_FILE")
    if path:
        try:
            with open(os.path.expanduser(path)) as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        return line
        except OSError:
            return None
    return None


def check_api(timeout: float = 5.0) -> str | None:
    """None when /readyz answers 2xx, else the reason."""
    port = os.environ.get("SGMIM_PORT", "8000")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/readyz")
    token = first_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return None if 200 <= response.status < 300 else f"/readyz answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"/readyz answered {exc.code}: {exc.read(200).decode(errors='replace')}"
    except OSError as exc:
        return f"/readyz unreachable: {exc}"


def check_worker(timeout: float = 10.0) -> str | None:
    """None when a Celery node named <anything>@<this hostname> answers a ping."""
    from service.queue import app

    hostname = socket.gethostname()
    try:
        replies = app.control.ping(timeout=timeout) or []
    except Exception as exc:  # broker unreachable, bad URL, ...
        return f"ping failed: {type(exc).__name__}: {exc}"
    nodes = [name for reply in replies for name in reply]
    if any(name.endswith("@" + hostname) for name in nodes):
        return None
    return f"no worker node @{hostname} answered (answered: {', '.join(nodes) or 'none'})"


def main(argv: list[str]) -> int:
    checks = {"api": check_api, "worker": check_worker}
    if len(argv) != 1 or argv[0] not in checks:
        print(f"usage: sgmim-healthcheck {{{'|'.join(checks)}}}", file=sys.stderr)
        return 2
    problem = checks[argv[0]]()
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
