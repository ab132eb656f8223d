"""Tests for MultiTaskBatchSampler: quotas, batch composition, determinism, and accelerate sharding."""

from collections import Counter

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard, prepare_data_loader
from torch.utils.data import DataLoader

from multitask_encoder.sampling import MultiTaskBatchSampler, largest_remainder_allocation

# Sizes whose square roots are whole numbers (10, 20, 40), so temperature quotas can be checked by hand.
SQUARE_GROUPS = {"topic": 100, "sentiment": 400, "domain+sentiment": 1600}
SQUARE_TOTAL = 2100


def group_ranges(group_sizes: dict[str, int]) -> dict[str, range]:
    """Row range of each group in the concatenated dataset."""
    ranges, start = {}, 0
    for name, size in group_sizes.items():
        ranges[name] = range(start, start + size)
        start += size
    return ranges


def group_of(row: int, group_sizes: dict[str, int]) -> str:
    return next(name for name, rows in group_ranges(group_sizes).items() if row in rows)


def counts_by_group(batches: list[list[int]], group_sizes: dict[str, int]) -> dict[str, int]:
    counts = Counter(group_of(row, group_sizes) for batch in batches for row in batch)
    return {name: counts[name] for name in group_sizes}


def batch_groups(batches: list[list[int]], group_sizes: dict[str, int]) -> list[set[str]]:
    return [{group_of(row, group_sizes) for row in batch} for batch in batches]


# ---- quotas ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampling", "expected_counts"),
    [
        ("proportional", {"topic": 100, "sentiment": 400, "domain+sentiment": 1600}),
        ("uniform", {"topic": 700, "sentiment": 700, "domain+sentiment": 700}),
        # T = 2: weights sqrt(n) = 10, 20, 40 -> p = 1/7, 2/7, 4/7 of 2100 rows.
        ("temperature", {"topic": 300, "sentiment": 600, "domain+sentiment": 1200}),
    ],
)
def test_mixed_row_counts_follow_sampling(sampling: str, expected_counts: dict[str, int]) -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, batch_size=16, sampling=sampling, temperature=2.0)
    batches = list(sampler)
    assert counts_by_group(batches, SQUARE_GROUPS) == expected_counts
    assert sampler.realised_group_counts() == expected_counts


@pytest.mark.parametrize(
    ("sampling", "expected_batches"),
    [
        ("proportional", {"topic": 10, "sentiment": 40, "domain+sentiment": 160}),
        ("uniform", {"topic": 70, "sentiment": 70, "domain+sentiment": 70}),
        ("temperature", {"topic": 30, "sentiment": 60, "domain+sentiment": 120}),
    ],
)
def test_per_task_batch_counts_follow_sampling(sampling: str, expected_batches: dict[str, int]) -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, batch_size=10, composition="per_task", sampling=sampling)
    groups = batch_groups(list(sampler), SQUARE_GROUPS)
    assert Counter(next(iter(g)) for g in groups) == expected_batches
    assert sampler.realised_group_counts() == {name: 10 * k for name, k in expected_batches.items()}


def test_temperature_probabilities_match_hand_computation() -> None:
    # sqrt(1000) = 31.6228, sqrt(39000) = 197.4842 -> p_topic = 31.6228 / 229.1070 = 0.138026.
    sizes = {"topic": 1000, "sentiment": 39000}
    sampler = MultiTaskBatchSampler(sizes, batch_size=32, sampling="temperature", temperature=2.0)
    assert sampler.group_probabilities["topic"] == pytest.approx(0.138026, abs=1e-6)
    assert sampler.group_probabilities["sentiment"] == pytest.approx(0.861974, abs=1e-6)
    # 0.138026 * 40000 = 5521.05 rows; per_task: 0.138026 * 1250 batches = 172.53 -> 173 (larger remainder).
    assert sampler.realised_group_counts() == {"topic": 5521, "sentiment": 34479}
    per_task = MultiTaskBatchSampler(sizes, 32, composition="per_task", sampling="temperature")
    assert per_task.realised_group_counts() == {"topic": 173 * 32, "sentiment": 1077 * 32}


def test_temperature_limits_are_proportional_and_uniform() -> None:
    sizes = {"topic": 1000, "sentiment": 39000}
    at_one = MultiTaskBatchSampler(sizes, 32, sampling="temperature", temperature=1.0)
    assert at_one.group_probabilities == pytest.approx({"topic": 0.025, "sentiment": 0.975})
    very_hot = MultiTaskBatchSampler(sizes, 32, sampling="temperature", temperature=1e6)
    assert very_hot.group_probabilities == pytest.approx({"topic": 0.5, "sentiment": 0.5}, abs=1e-4)


def test_largest_remainder_allocation_is_exact_up_to_rounding() -> None:
    assert largest_remainder_allocation(10, np.array([1.0, 1.0, 1.0])).tolist() == [4, 3, 3]
    assert largest_remainder_allocation(7, np.array([1.0, 2.0, 4.0])).tolist() == [1, 2, 4]
    # Exact shares 15.5, 34.5, 50 -> floors 15, 34, 50; the missing unit breaks the .5/.5 tie to the first.
    assert largest_remainder_allocation(100, np.array([15.5, 34.5, 50.0])).tolist() == [16, 34, 50]


def test_examples_per_epoch_sets_epoch_size() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 10, sampling="uniform", examples_per_epoch=300)
    assert len(sampler) == 30
    assert sampler.realised_group_counts() == {"topic": 100, "sentiment": 100, "domain+sentiment": 100}


# ---- batch composition and index validity ---------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["proportional", "uniform", "temperature"])
def test_per_task_batches_are_full_and_single_group(sampling: str) -> None:
    sizes = {"a": 37, "b": 205, "c": 61}  # not multiples of the batch size
    sampler = MultiTaskBatchSampler(sizes, 8, composition="per_task", sampling=sampling)
    batches = list(sampler)
    assert all(len(batch) == 8 for batch in batches)
    assert all(len(groups) == 1 for groups in batch_groups(batches, sizes))


def test_per_task_uniform_alternates_groups_round_robin() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 10, composition="per_task", sampling="uniform")
    groups = [next(iter(g)) for g in batch_groups(list(sampler), SQUARE_GROUPS)]
    rounds = [groups[i : i + 3] for i in range(0, len(groups), 3)]
    assert all(sorted(r) == sorted(SQUARE_GROUPS) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order within a round is shuffled


def test_per_task_small_group_is_spread_over_the_epoch() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 10, composition="per_task")  # topic: 10 of 210 batches
    groups = [next(iter(g)) for g in batch_groups(list(sampler), SQUARE_GROUPS)]
    topic_positions = [i for i, g in enumerate(groups) if g == "topic"]
    # Stratified order puts the j-th topic batch in the j-th tenth of the epoch (21 batches), give or take
    # the other groups' rounding; a plain shuffle would scatter them by about +-30 batches.
    assert len(topic_positions) == 10
    assert all(abs(position / 21 - (j + 0.5)) < 0.6 for j, position in enumerate(topic_positions))


def test_mixed_batches_mix_groups_in_planned_shares() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 30, sampling="uniform")
    batches = list(sampler)
    assert sum(len(groups) > 1 for groups in batch_groups(batches, SQUARE_GROUPS)) == len(batches)
    mean_share = {
        name: np.mean([sum(row in rows for row in batch) / len(batch) for batch in batches])
        for name, rows in group_ranges(SQUARE_GROUPS).items()
    }
    assert mean_share == pytest.approx({name: 1 / 3 for name in SQUARE_GROUPS}, abs=0.01)


@pytest.mark.parametrize("composition", ["mixed", "per_task"])
@pytest.mark.parametrize("sampling", ["proportional", "uniform", "temperature"])
def test_every_index_is_inside_the_dataset(composition: str, sampling: str) -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 7, composition=composition, sampling=sampling)
    rows = [row for batch in sampler for row in batch]
    assert all(isinstance(row, int) for row in rows)
    assert min(rows) >= 0 and max(rows) < SQUARE_TOTAL


@pytest.mark.parametrize("composition", ["mixed", "per_task"])
def test_proportional_epoch_visits_every_row_once(composition: str) -> None:
    # per_task is duplicate-free when every group is a whole number of batches.
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 20, composition=composition)
    rows = [row for batch in sampler for row in batch]
    assert sorted(rows) == list(range(SQUARE_TOTAL))


def test_uniform_upsamples_small_group_and_truncates_big_group() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 20, sampling="uniform")  # 700 rows per group
    rows = Counter(row for batch in sampler for row in batch)
    ranges = group_ranges(SQUARE_GROUPS)
    assert {rows[row] for row in ranges["topic"]} == {7}  # 700 / 100: seven full reshuffled passes
    big_group_rows = [row for row in rows if row in ranges["domain+sentiment"]]
    assert len(big_group_rows) == 700 and all(rows[row] == 1 for row in big_group_rows)


# ---- caps and oversampling --------------------------------------------------------------------------------


def test_max_examples_subsamples_without_replacement_and_changes_per_epoch() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 16, max_examples={"domain+sentiment": 50})
    assert sampler.realised_group_counts() == {"topic": 100, "sentiment": 400, "domain+sentiment": 50}
    assert sampler.group_probabilities["domain+sentiment"] == pytest.approx(50 / 550)
    big_group = group_ranges(SQUARE_GROUPS)["domain+sentiment"]
    subsets = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        rows = [row for batch in sampler for row in batch if row in big_group]
        assert len(rows) == len(set(rows)) == 50
        subsets.append(set(rows))
    assert subsets[0] != subsets[1]


def test_min_examples_repeats_a_small_group() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 16, min_examples={"topic": 250})
    assert sampler.realised_group_counts() == {"topic": 250, "sentiment": 400, "domain+sentiment": 1600}
    rows = Counter(row for batch in sampler for row in batch)
    # 250 = 2.5 passes over 100 rows: every row twice, half of them a third time.
    assert Counter(rows[row] for row in group_ranges(SQUARE_GROUPS)["topic"]) == {2: 50, 3: 50}


# ---- determinism -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("composition", ["mixed", "per_task"])
def test_same_arguments_give_same_batches_and_epochs_and_seeds_differ(composition: str) -> None:
    def batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 16, composition, "temperature", seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(seed=3, epoch=2) == batches(seed=3, epoch=2)
    assert batches(seed=3, epoch=2) != batches(seed=3, epoch=3)
    assert batches(seed=3, epoch=2) != batches(seed=4, epoch=2)
    # default_rng(seed + epoch) would make these two equal.
    assert batches(seed=0, epoch=1) != batches(seed=1, epoch=0)


def test_iteration_does_not_consume_global_rng_state() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 16)
    np.random.seed(0)
    first = list(sampler)
    np.random.seed(1)
    assert list(sampler) == first


# ---- length ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("composition", ["mixed", "per_task"])
@pytest.mark.parametrize(("drop_last", "expected_len"), [(False, 132), (True, 131)])
def test_len_equals_batches_yielded(composition: str, drop_last: bool, expected_len: int) -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 16, composition, drop_last=drop_last)  # 2100 = 131*16 + 4
    batches = list(sampler)
    assert len(sampler) == len(batches) == expected_len
    expected_last = 4 if composition == "mixed" and not drop_last else 16  # per_task batches are always full
    assert len(batches[-1]) == expected_last
    assert all(len(batch) == 16 for batch in batches[:-1])


def test_dataloader_accepts_sampler_as_batch_sampler() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 16)
    loader = DataLoader(list(range(SQUARE_TOTAL)), batch_sampler=sampler)
    assert [batch.tolist() for batch in loader] == list(sampler)


# ---- accelerate sharding -----------------------------------------------------------------------------------


def shard_batches(sampler: MultiTaskBatchSampler, num_processes: int = 2) -> list[list[list[int]]]:
    """What each rank of a `num_processes` run iterates (accelerate defaults: even_batches=True)."""
    return [list(BatchSamplerShard(sampler, num_processes, rank)) for rank in range(num_processes)]


@pytest.mark.parametrize("composition", ["mixed", "per_task"])
def test_batchsamplershard_two_ranks_partition_the_sequence(composition: str) -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 15, composition, "temperature", seed=7)  # 140 batches
    sampler.set_epoch(1)
    unwrapped = list(sampler)
    rank0, rank1 = shard_batches(sampler)
    assert len(rank0) == len(rank1) == len(BatchSamplerShard(sampler, 2, 0)) == 70
    assert rank0 == unwrapped[0::2] and rank1 == unwrapped[1::2]
    assert sorted(rank0 + rank1) == sorted(unwrapped)


def test_batchsamplershard_pads_odd_per_task_epoch_with_a_whole_batch() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 20, "per_task", "uniform", examples_per_epoch=420)  # 21
    unwrapped = list(sampler)
    rank0, rank1 = shard_batches(sampler)
    assert len(rank0) == len(rank1) == 11
    assert rank0 + rank1[:-1] == unwrapped[0::2] + unwrapped[1::2]
    assert rank1[-1] == unwrapped[0]  # even_batches padding repeats batch 0, so it is still single-group


def test_batchsamplershard_follows_set_epoch_on_the_wrapped_sampler() -> None:
    sampler = MultiTaskBatchSampler(SQUARE_GROUPS, 15, "per_task", "uniform")
    epoch0 = shard_batches(sampler)
    sampler.set_epoch(1)  # the wrapper keeps a reference, so both ranks switch together
    epoch1 = shard_batches(sampler)
    assert epoch0 != epoch1
    assert epoch1[0] + epoch1[1] == list(sampler)[0::2] + list(sampler)[1::2]


def test_dataloadershard_set_epoch_reaches_sampler_only_without_batchsamplershard() -> None:
    dataset = list(range(SQUARE_TOTAL))
    single = MultiTaskBatchSampler(SQUARE_GROUPS, 16)
    single_loader = prepare_data_loader(DataLoader(dataset, batch_sampler=single), num_processes=1)
    single_loader.set_epoch(3)
    assert single.epoch == 3

    # Two processes: DataLoaderShard.set_epoch stops at BatchSamplerShard (no set_epoch, no `.sampler`).
    # Trainer._run_epoch (transformers 5.23) therefore calls loader.batch_sampler.batch_sampler.set_epoch.
    sharded = MultiTaskBatchSampler(SQUARE_GROUPS, 15)  # 140 full batches: no end-of-epoch padding
    loader = prepare_data_loader(DataLoader(dataset, batch_sampler=sharded), num_processes=2, process_index=1)
    loader.set_epoch(3)
    assert sharded.epoch == 0
    assert isinstance(loader.batch_sampler, BatchSamplerShard)
    assert loader.batch_sampler.batch_sampler is sharded
    loader.batch_sampler.batch_sampler.set_epoch(3)
    assert [batch.tolist() for batch in loader] == list(sharded)[1::2]


# ---- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group_sizes": {}}, "group_sizes is empty"),
        ({"group_sizes": {"topic": 10, "ner": 0}}, "group 'ner' has size 0"),
        (
            {"composition": "interleaved"},
            "unknown composition 'interleaved'; valid values: 'mixed', 'per_task'",
        ),
        (
            {"sampling": "sqrt"},
            "unknown sampling 'sqrt'; valid values: 'proportional', 'uniform', 'temperature'",
        ),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": float("nan")}, "temperature must be > 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"max_examples": {"sentimnet": 5}}, "max_examples names 'sentimnet', which is not a group"),
        ({"min_examples": {"ner": 5}}, "min_examples names 'ner', which is not a group"),
        ({"max_examples": {"topic": 0}}, r"max_examples\['topic'\] must be >= 1"),
        (
            {"min_examples": {"topic": 9}, "max_examples": {"topic": 5}},
            r"min_examples\['topic'\] = 9 exceeds",
        ),
        ({"examples_per_epoch": 0}, "examples_per_epoch must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    arguments = {"group_sizes": {"topic": 10, "sentiment": 20}, "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        MultiTaskBatchSampler(**arguments)


def test_negative_epoch_is_rejected() -> None:
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        MultiTaskBatchSampler({"topic": 10}, 4).set_epoch(-1)
