"""Invariants of docker-compose.yml and the deploy/compose.*.yml overrides (no Docker engine needed).

What a GPU box's `docker compose up` relies on: every service health-checked (or a stated
reason), the worker's GPU reservation and shared memory, the artifact volume shared by api and
worker, datasets read-only, secrets only from `${VAR:?}`, pinned images, restart policies,
start order on health, and commands that exist in the package.
"""

from __future__ import annotations

import re

import pytest

from tests.deploy.helpers import (
    COMPOSE,
    DOCKERFILES,
    ENV_EXAMPLE,
    OVERRIDES,
    PYPROJECT,
    ROOT,
    SECRET_NAME,
    command_argv,
    env_mapping,
    interpolations,
    load_yaml,
    parse_dockerfile,
    referenced_variables,
    walk_strings,
)

SERVICES = {"api", "worker", "postgres", "redis", "flower"}
OWN_IMAGES = {"api", "worker"}  # built from deploy/*.Dockerfile
ARTIFACT_VOLUME = "artifacts"
DATASET_VOLUME = "datasets"
HEALTHCHECK_REASON_KEYS = ("x-healthcheck-reason",)
HEALTHCHECK_REASON_LABEL = "com.sgmim.healthcheck-reason"
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}


def services(doc: dict) -> dict[str, dict]:
    return doc.get("services") or {}


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume of a service (short or long syntax)."""
    mounts = []
    for item in service.get("volumes") or []:
        if isinstance(item, str):
            parts = item.split(":")
            source, target = parts[0], parts[1]
            mode = parts[2] if len(parts) > 2 else "rw"
            mounts.append((source, target, "ro" in mode.split(",")))
        else:
            mounts.append((item.get("source"), item["target"], bool(item.get("read_only"))))
    return mounts


def test_services_and_profiles(compose):
    assert set(services(compose)) == SERVICES
    for name, service in services(compose).items():
        if name == "flower":
            assert service.get("profiles") == ["monitoring"], "flower runs only with --profile monitoring"
        else:
            assert not service.get("profiles"), f"{name} must start with a plain `docker compose up`"
    assert "version" not in compose, "the compose spec needs no version key (docker-compose 1.27+)"


def test_every_service_has_a_healthcheck_or_a_reason(compose):
    for name, service in services(compose).items():
        check = service.get("healthcheck") or {}
        if check and not check.get("disable"):
            test = check.get("test")
            assert test and test != ["NONE"], f"{name}: empty healthcheck"
            for key in ("interval", "timeout", "retries"):
                assert key in check, f"{name}: healthcheck without {key}"
            continue
        labels = service.get("labels") or {}
        reason = next((service[k] for k in HEALTHCHECK_REASON_KEYS if service.get(k)), None)
        reason = reason or (labels.get(HEALTHCHECK_REASON_LABEL) if isinstance(labels, dict) else None)
        assert reason and len(str(reason).strip()) > 10, (
            f"{name}: no healthcheck and no stated reason ({HEALTHCHECK_REASON_KEYS[0]} or the "
            f"label {HEALTHCHECK_REASON_LABEL})")


def test_specific_healthchecks(compose):
    svc = services(compose)
    assert svc["api"]["healthcheck"]["test"] == ["CMD", "sgmim-healthcheck", "api"]  # GET /readyz
    assert svc["worker"]["healthcheck"]["test"] == ["CMD", "sgmim-healthcheck", "worker"]
    assert "pg_isready" in svc["postgres"]["healthcheck"]["test"]
    assert "redis-cli ping" in " ".join(svc["redis"]["healthcheck"]["test"])
    healthcheck_script = (ROOT / "deploy" / "healthcheck.py").read_text()
    assert "/readyz" in healthcheck_script


def test_start_order_waits_for_health(compose):
    svc = services(compose)
    for name, service in svc.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must use the long form with a condition"
        for target, spec in depends.items():
            assert target in svc, f"{name} depends on unknown service {target}"
            assert (spec or {}).get("condition") == "service_healthy", \
                f"{name} -> {target}: condition must be service_healthy"
            assert svc[target].get("healthcheck"), f"{name} waits for {target}, which has no healthcheck"
    for name in ("api", "worker"):
        assert {"postgres", "redis"} <= set(svc[name]["depends_on"]), f"{name} needs the database and broker"


def test_restart_policies_and_logs(compose):
    for name, service in services(compose).items():
        policy = service.get("restart") or (service.get("deploy", {}).get("restart_policy") or {}).get(
            "condition")
        assert policy in RESTART_POLICIES | {"any"}, f"{name}: restart policy {policy!r}"
        logging = service.get("logging") or {}
        assert logging.get("driver", "json-file") in ("json-file", "local"), \
            f"{name}: logs must stay readable with `docker compose logs`"
    for name in OWN_IMAGES:
        env = env_mapping(services(compose)[name])
        assert env.get("PYTHONUNBUFFERED") == "1", f"{name}: unbuffered stdout"


def test_worker_gpu_reservation(compose):
    worker = services(compose)["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if "gpu" in (d.get("capabilities") or [])]
    assert len(gpu) == 1, "exactly one GPU device reservation on the worker"
    assert gpu[0]["driver"] == "nvidia"
    count = str(gpu[0]["count"])
    m = re.fullmatch(r"\$\{(?P<name>\w+):-(?P<default>all|\d+)\}", count)
    assert m, f"GPU count must come from a variable with a default, e.g. ${{SGMIM_WORKER_GPUS:-all}}: {count}"
    assert m["name"] in ENV_EXAMPLE.read_text(), "document the GPU count variable in deploy/.env.example"
    for name, service in services(compose).items():
        if name != "worker":
            assert "deploy" not in service or "devices" not in str(service["deploy"]), \
                f"{name} must not reserve GPUs"


def test_worker_shared_memory_and_limits(compose):
    worker = services(compose)["worker"]
    assert worker.get("ipc") == "host" or worker.get("shm_size"), \
        "the worker needs shm_size or ipc: host (DataLoader workers and NCCL use /dev/shm)"
    if worker.get("shm_size"):
        m = re.search(r"(\d+)\s*(g|gb)\b", str(worker["shm_size"]).lower())
        assert m and int(m[1]) >= 1, f"shm_size {worker['shm_size']!r}: at least 1g"
    assert worker.get("ulimits", {}).get("memlock") == -1, "NCCL / pinned memory: memlock unlimited"


def test_worker_concurrency_is_one(compose):
    argv = command_argv(services(compose)["worker"].get("command"))
    for flag in ("--concurrency", "-c"):
        if flag in argv:
            assert argv[argv.index(flag) + 1] == "1", "one job per GPU box at a time"
    for name, service in services(compose).items():
        assert not service.get("scale") and not (service.get("deploy") or {}).get("replicas"), \
            f"{name}: no replicas (one worker container per GPU box)"


def test_named_volumes_shared_as_stated(compose):
    svc = services(compose)
    declared = compose.get("volumes") or {}
    assert {ARTIFACT_VOLUME, DATASET_VOLUME, "pgdata", "redisdata"} <= set(declared)
    for name, service in svc.items():
        for source, target, _ in volume_mounts(service):
            assert source in declared, f"{name}: {source}:{target} is not a named volume"
    artifact_targets = {}
    for name in ("api", "worker"):
        mounts = {source: (target, ro) for source, target, ro in volume_mounts(svc[name])}
        assert ARTIFACT_VOLUME in mounts, f"{name} must mount the artifact volume"
        target, read_only = mounts[ARTIFACT_VOLUME]
        assert not read_only or name == "api", "the worker writes run directories"
        artifact_targets[name] = target
        assert env_mapping(svc[name]).get("SGMIM_ARTIFACT_ROOT") == target, \
            f"{name}: SGMIM_ARTIFACT_ROOT must be where the artifact volume is mounted"
    assert artifact_targets["api"] == artifact_targets["worker"], \
        "api and worker must see run directories at the same path"
    for name, service in svc.items():
        for source, _target, read_only in volume_mounts(service):
            if source == DATASET_VOLUME:
                assert read_only, f"{name}: datasets must be mounted read-only"
    assert any(s == DATASET_VOLUME for s, _, _ in volume_mounts(svc["worker"]))
    assert ("pgdata", "/var/lib/postgresql/data", False) in volume_mounts(svc["postgres"])
    assert ("redisdata", "/data", False) in volume_mounts(svc["redis"])


def test_redis_is_a_durable_broker(compose):
    redis = services(compose)["redis"]
    argv = command_argv(redis["command"])
    assert argv[0] == "redis-server"

    def option(name: str) -> str | None:
        return argv[argv.index(name) + 1] if name in argv else None

    assert option("--appendonly") == "yes", "AOF persistence: queued messages survive a restart"
    assert option("--appendfsync") in ("everysec", "always")
    assert option("--maxmemory-policy") == "noeviction", "a broker must never evict messages"
    assert option("--requirepass"), "Redis is reachable from other boxes when scaling out"


def test_postgres_version(compose):
    image = services(compose)["postgres"]["image"]
    m = re.fullmatch(r"postgres:(\d+)\.(\d+)(-[a-z0-9.]+)?", image)
    assert m and int(m[1]) in (15, 16), f"Postgres 15 or 16, pinned to a minor version: {image}"


def _image_tag(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def test_images_pinned(compose):
    version = PYPROJECT["project"]["version"]
    for name, service in services(compose).items():
        image = service.get("image")
        assert image, f"{name}: no image name"
        if name in OWN_IMAGES:
            assert service.get("build"), f"{name}: built from the repository"
            m = re.fullmatch(rf".*sgmim-{name}:\$\{{(\w+):-([^}}]+)\}}", image)
            assert m, f"{name}: tag from a variable with a default ({image})"
            assert m[2] == version, f"{name}: default tag {m[2]} must be the package version {version}"
            continue
        repo, tag, digest = _image_tag(image)
        assert not interpolations(image), f"{name}: third-party image names are fixed ({image})"
        assert digest or tag, f"{name}: untagged image {image}"
        if tag:
            assert tag != "latest" and re.match(r"^v?\d+\.\d+", tag), \
                f"{name}: tag {tag!r} is not a pinned version (major.minor at least)"


def _required_secret(value: str) -> bool:
    return bool(re.fullmatch(r"\$\{\w+:\?[^}]*\}", value))


def test_no_secret_literals():
    """Passwords and tokens come only from `${VAR:?...}`: never a literal, never a default."""
    for path in [COMPOSE, *OVERRIDES.values()]:
        for name, ops in referenced_variables(path).items():
            if SECRET_NAME.search(name):
                assert ops == {":?"}, f"{path.name}: ${{{name}}} must be required (:?), not {ops}"
        doc = load_yaml(path)
        for name, service in services(doc).items():
            for key, value in env_mapping(service).items():
                if SECRET_NAME.search(key):
                    assert _required_secret(value), f"{path.name}: {name}.{key} = {value!r}"
            argv = command_argv(service.get("command"))
            for flag in ("--requirepass", "--password", "--token"):
                if flag in argv:
                    assert _required_secret(argv[argv.index(flag) + 1]), f"{path.name}: {name} {flag}"
        for where, value in walk_strings(doc):
            for cred in re.finditer(r"://[^/\s:@]*:(?P<password>[^@\s]+)@", value):
                assert _required_secret(cred["password"]), f"{path.name}: {where}: password in a URL"


def test_api_token_required_in_this_mode(compose):
    value = env_mapping(services(compose)["api"])["SGMIM_API_TOKENS"]
    assert re.fullmatch(r"\$\{SGMIM_API_TOKENS:\?[^}]+\}", value)
    argv = command_argv(services(compose)["api"]["command"])
    assert argv[argv.index("--host") + 1] == "0.0.0.0", "in its container the API listens on every interface"


def _settings_fields() -> set[str] | None:
    try:
        from service.settings import Settings
    except ImportError:
        return None
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, info in Settings.model_fields.items():
        names.add((prefix + field_name).upper())
        if isinstance(info.alias, str):
            names.add(info.alias.upper())
    return names


def test_sgmim_variables_are_real_settings():
    """Every SGMIM_* variable a compose file passes to a container is a field of the service's
    Settings (pydantic-settings ignores unknown ones silently, so a typo would go unnoticed)."""
    fields = _settings_fields()
    if fields is None:
        pytest.skip("service/settings.py is not importable (yet): nothing to check against")
    for path in [COMPOSE, *OVERRIDES.values()]:
        for name, service in services(load_yaml(path)).items():
            for key in env_mapping(service):
                if key.startswith("SGMIM_"):
                    assert key in fields, f"{path.name}: {name} sets {key}, which no setting reads"
    for path in DOCKERFILES.values():
        for stage in parse_dockerfile(path):
            for env in stage.args("ENV"):
                for key in re.findall(r"\b(SGMIM_[A-Z0-9_]+)=", env):
                    assert key in fields, f"{path.name} sets {key}, which no setting reads"


def _typer_command(argv: list[str]):
    """The click command that `sgmim <sub> ...` runs, or None when <sub> is not registered."""
    import typer.main

    script = PYPROJECT["project"]["scripts"].get(argv[0])
    assert script == "sgmim.cli:app", f"{argv[0]} is not the console script of pyproject.toml"
    from sgmim.cli import app

    group = typer.main.get_command(app)
    return group.commands.get(argv[1]) if hasattr(group, "commands") else None


@pytest.mark.parametrize("service", sorted(OWN_IMAGES))
def test_commands_exist_in_the_package(compose, service):
    argv = command_argv(services(compose)[service]["command"])
    assert argv[0] == "sgmim" and len(argv) >= 2, f"{service}: runs the sgmim console script"
    command = _typer_command(argv)
    if command is None:
        pytest.skip(f"`sgmim {argv[1]}` is not registered in sgmim.cli.app yet (the compose file "
                    f"runs it); this test checks it and its options once it is")
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for arg in argv[2:]:
        if arg.startswith("-"):
            assert arg.split("=", 1)[0] in options, f"`sgmim {argv[1]}` has no option {arg}"


def test_env_example_documents_every_variable():
    """Each variable the compose files read is in deploy/.env.example; the required ones of
    docker-compose.yml uncommented (and empty: the user must choose them)."""
    text = ENV_EXAMPLE.read_text()
    active = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    commented = set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", text, re.M))
    for name in referenced_variables(COMPOSE, *OVERRIDES.values()):
        assert name in active or name in commented, f"{name} is not in deploy/.env.example"
    for name, ops in referenced_variables(COMPOSE).items():
        if ":?" in ops:
            assert name in active, f"{name} is required: list it uncommented in deploy/.env.example"
            if SECRET_NAME.search(name):
                assert active[name] == "", f"{name}: ship no secret value in the example"


def test_overrides(overrides):
    assert set(overrides) >= {"compose.worker-only.yml", "compose.primary.yml", "compose.multinode.yml"}
    worker_only = overrides["compose.worker-only.yml"]
    assert set(services(worker_only)) == {"worker"}, "the worker-only override changes only the worker"
    env = env_mapping(services(worker_only)["worker"])
    for key in ("SGMIM_DATABASE_URL", "SGMIM_BROKER_URL"):
        assert "${SGMIM_PRIMARY_HOST:?" in env[key], f"{key} must point at box 1 (SGMIM_PRIMARY_HOST)"
    for name in ("compose.worker-only.yml", "compose.primary.yml"):
        artifacts = overrides[name]["volumes"][ARTIFACT_VOLUME]
        assert "${SGMIM_SHARED_ARTIFACTS_DIR:?" in artifacts["driver_opts"]["device"], \
            f"{name}: artifacts on storage shared by every box"
    primary = services(overrides["compose.primary.yml"])
    for name in ("postgres", "redis"):
        ports = primary[name]["ports"]
        assert ports and all(p.startswith("${SGMIM_PRIMARY_BIND:?") for p in ports), \
            f"{name}: published only on the private address SGMIM_PRIMARY_BIND"
    multinode = services(overrides["compose.multinode.yml"])["worker"]
    assert multinode["network_mode"] == "host"
    assert "NCCL_SOCKET_IFNAME" in env_mapping(multinode)
    # each box registers the address the other nodes reach it at, and the rendezvous port
    assert env_mapping(multinode)["SGMIM_NODE_ADDR"].startswith("${SGMIM_NODE_ADDR:?")
    assert env_mapping(multinode)["SGMIM_MASTER_PORT"] == "${SGMIM_MASTER_PORT:-29500}"
