"""Data paths of a spec must lie under the data roots (issue 14, finding 1): a token holder
cannot make the trainer read arbitrary files of the worker host, and errors never quote a file's
contents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sgmim.data.errors import DataError, SkipPolicy
from sgmim.data.splitfile import read_split_file
from sgmim.spec import parse_spec
from sgmim.spec.paths import paths_outside
from tests.service.conftest import Api

JOBS = "/api/v1/jobs"


def finetune(data: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    return {"kind": "finetune", "name": "roots",
            "config": {"init": "file", "init_path": "/nonexistent/encoder.safetensors",
                       "data": data or {}, **config}}


def refused_fields(api: Api, body: dict[str, Any]) -> list[str]:
    r = api.client.post(JOBS, json=body)
    assert r.status_code == 422, r.text
    assert all(e["type"] == "path_not_allowed" for e in r.json()["detail"]), r.text
    return [".".join(map(str, e["loc"][1:])) for e in r.json()["detail"]]


def test_paths_outside_the_data_roots_are_refused_at_submit(api: Api):
    inside = str(api.settings.data_dir / "datasets" / "kitti")
    init = str(api.settings.data_dir / "encoder.safetensors")
    assert refused_fields(api, finetune({"dataset": "kitti", "root": "/etc"}, init_path=init)) == [
        "config.data.root"]
    assert refused_fields(api, finetune({"dataset": "kitti", "root": inside})) == ["config.init_path"]
    assert refused_fields(api, finetune({"dataset": "kitti", "root": inside, "train_split": "/etc/passwd"},
                                        init_path=init)) == ["config.data.train_split"]
    assert refused_fields(api, finetune({"dataset": "kitti", "root": inside,
                                         "val_split": "../../../../../etc/passwd"},
                                        init_path=init)) == ["config.data.val_split"]
    assert refused_fields(api, finetune({"dataset": "kitti", "root": "datasets/kitti"}, init_path=init)) == [
        "config.data.root"]
    pretrain = {"kind": "pretrain", "name": "p", "config": {"data": {"source": "image_folder", "root": "/"}}}
    assert refused_fields(api, pretrain) == ["config.data.root"]
    evaluate = {"kind": "evaluate", "name": "e", "parent": {"job_id": "0"},
                "config": {"split": "/proc/self/environ"}}
    assert refused_fields(api, evaluate) == ["config.split"]
    data = {"dataset": "kitti", "root": inside, "train_split": "eigen_train", "val_split": "splits/val.txt"}
    ok = api.client.post(JOBS, json=finetune(data, init_path=init))
    assert ok.status_code == 201, ok.text


def test_the_worker_check_resolves_symlinks(tmp_path: Path):
    allowed = tmp_path / "datasets"
    allowed.mkdir()
    (allowed / "kitti").symlink_to("/etc")
    spec = parse_spec(finetune({"dataset": "kitti", "root": str(allowed / "kitti")},
                               init_path=str(allowed / "encoder.safetensors")))
    assert paths_outside(spec, [allowed], resolve=False) == []  # as written: inside
    [(field, message)] = paths_outside(spec, [allowed], resolve=True)
    assert field == "config.data.root" and "not under a data root" in message


def test_a_malformed_split_file_line_is_never_quoted(tmp_path: Path):
    secret = "hunter2-secret-token"
    split = tmp_path / "split.txt"
    split.write_text(f"{secret}\n")
    with pytest.raises(DataError) as caught:
        read_split_file(split, tmp_path, ("",), ("",), SkipPolicy(strict=True))
    assert secret not in str(caught.value) and f"{split}:1" in str(caught.value)


def test_split_file_lines_cannot_leave_the_dataset_root(tmp_path: Path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "img").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (root / "img" / "a.png").write_bytes(b"x")
    split = root / "split.txt"
    split.write_text("img/a.png img/a.png\n../outside/secret.png ../outside/secret.png\n")
    with pytest.raises(DataError) as caught:
        read_split_file(split, root, ("",), ("",), SkipPolicy(strict=True))
    assert "1 lines of" in str(caught.value) and "line 2" in str(caught.value)
    assert "secret" not in str(caught.value)
