"""Resume takes the newest checkpoint every rank finished: DeepSpeed's `latest` can name a tag
whose other ranks' shards a lost node cut short (a 2-node run killed mid-save resumed from a
truncated optimizer shard: "PytorchStreamReader failed reading zip archive")."""

from __future__ import annotations

from pathlib import Path

from sgmim.train.checkpoint import latest_tag, prune, record_zero_stage


def make_tag(ckpt_dir: Path, step: int, whole: bool) -> None:
    tag_dir = ckpt_dir / f"global_step{step}"
    tag_dir.mkdir(parents=True)
    (tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"rank 0")
    if whole:
        record_zero_stage(tag_dir, 2)
    (ckpt_dir / "latest").write_text(tag_dir.name)


def test_latest_naming_a_tag_no_rank_finished_together_falls_back_to_the_newest_whole_one(tmp_path):
    make_tag(tmp_path, 4, whole=True)
    make_tag(tmp_path, 8, whole=True)
    make_tag(tmp_path, 12, whole=False)  # node lost while saving: `latest` already names it
    assert latest_tag(tmp_path) == "global_step8"
    prune(tmp_path, keep=1)
    assert (tmp_path / "global_step8").is_dir(), "the whole checkpoint is never pruned"


def test_a_whole_latest_and_a_checkpoint_from_before_the_record_are_taken_as_they_are(tmp_path):
    make_tag(tmp_path, 4, whole=True)
    make_tag(tmp_path, 8, whole=True)
    assert latest_tag(tmp_path) == "global_step8"
    old = tmp_path / "old"
    make_tag(old, 4, whole=False)
    assert latest_tag(old) == "global_step4"
    assert latest_tag(tmp_path / "none") is None
