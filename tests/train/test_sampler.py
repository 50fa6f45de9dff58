"""RunSampler: one pass over the whole run gives the same keys, in the same order, as the run
read epoch by epoch, and a resumed run continues exactly where the interrupted one stopped."""

from __future__ import annotations

import numpy as np
import pytest

from sgmim.train.sampler import RunSampler

SAMPLES, SEED = 23, 5
STEPS_PER_EPOCH, SAMPLES_PER_STEP = 2, 4   # 8 of each rank's 11 or 23 samples per epoch


def sampler(start_step: int = 0, total_steps: int = 7, rank: int = 0, world_size: int = 1) -> RunSampler:
    return RunSampler(SAMPLES, rank, world_size, SEED, STEPS_PER_EPOCH, SAMPLES_PER_STEP,
                      start_step, total_steps)


def epoch_by_epoch(total_steps: int, rank: int, world_size: int) -> list[tuple[int, int]]:
    """The run spelled out: epoch e's permutation of (seed, e), this rank's every world-th
    index, the first steps_per_epoch × samples_per_step of it, until total_steps."""
    keys: list[tuple[int, int]] = []
    for epoch in range(total_steps // STEPS_PER_EPOCH + 1):
        order = np.random.default_rng([SEED, epoch]).permutation(SAMPLES)
        keys += [(epoch, int(i)) for i in order[rank::world_size][: STEPS_PER_EPOCH * SAMPLES_PER_STEP]]
    return keys[: total_steps * SAMPLES_PER_STEP]


@pytest.mark.parametrize("world_size", [1, 2])
def test_one_pass_is_the_run_read_epoch_by_epoch(world_size):
    shares = [list(sampler(rank=r, world_size=world_size)) for r in range(world_size)]
    for rank, keys in enumerate(shares):
        assert keys == epoch_by_epoch(7, rank, world_size)
        assert len(keys) == len(sampler(rank=rank, world_size=world_size)) == 7 * SAMPLES_PER_STEP
        assert {epoch for epoch, _ in keys} == {0, 1, 2, 3}
    if world_size == 2:
        for epoch in range(4):
            first, second = ({i for e, i in keys if e == epoch} for keys in shares)
            assert not first & second, f"epoch {epoch}: the ranks share a sample"


@pytest.mark.parametrize("start_step", [1, 3, 4, 6])
def test_a_resumed_run_continues_where_the_interrupted_one_stopped(start_step):
    whole = list(sampler())
    resumed = sampler(start_step=start_step)
    assert list(resumed) == whole[start_step * SAMPLES_PER_STEP:]
    assert len(resumed) == (7 - start_step) * SAMPLES_PER_STEP


def test_a_finished_run_reads_nothing():
    done = sampler(start_step=7)
    assert list(done) == [] and len(done) == 0


def test_an_epoch_larger_than_a_ranks_share_is_refused():
    with pytest.raises(ValueError, match="needs more than the 11 samples"):
        RunSampler(SAMPLES, 0, 2, SEED, 3, SAMPLES_PER_STEP, 0, 6)
