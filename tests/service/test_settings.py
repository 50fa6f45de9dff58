"""Settings: defaults (embedded mode) and environment parsing."""

from __future__ import annotations

from pathlib import Path

from service.db import open_repo
from service.settings import Settings


def test_defaults_are_the_embedded_mode(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    s = Settings()
    assert s.data_dir == Path("/home/someone/.sgmim")
    assert s.resolved_database_url == "sqlite:////home/someone/.sgmim/sgmim.db"
    assert s.resolved_broker_url == "filesystem://" and s.result_backend is None
    assert s.resolved_artifact_root == Path("/home/someone/.sgmim/artifacts")
    assert s.run_dir("abc") == Path("/home/someone/.sgmim/artifacts/jobs/abc")
    assert s.host == "127.0.0.1" and s.configured_tokens == []


def test_environment_overrides(monkeypatch, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# comment\nfrom-file\n")
    monkeypatch.setenv("SGMIM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SGMIM_DATABASE_URL", "postgresql://u@db:5432/sgmim")
    monkeypatch.setenv("SGMIM_API_TOKENS", "a, b,,c")
    monkeypatch.setenv("SGMIM_TOKEN_FILE", str(tokens))
    monkeypatch.setenv("SGMIM_MAX_BODY_BYTES", "2048")
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg://u@db:5432/sgmim"
    assert s.configured_tokens == ["a", "b", "c", "from-file"]
    assert s.max_body_bytes == 2048 and s.data_dir == tmp_path


def test_open_repo_migrates(tmp_path):
    repo = open_repo(Settings(data_dir=tmp_path))
    assert repo.list() == [] and (tmp_path / "sgmim.db").exists()
    repo.db.dispose()
