"""Batch sampler deciding which rows of a concatenated multi-task training set go into each batch.

The training set is ONE dataset made of consecutive *groups*: one data source each, laid out in the
order of ``group_sizes`` (group 0 is rows ``0 .. n_0 - 1``, group 1 follows, and so on).
:class:`MultiTaskBatchSampler` yields lists of dataset indices, one list per batch, and is meant to be
passed to a ``DataLoader`` as ``batch_sampler``.

Epoch schedule
--------------
1. **Epoch pool** of each group. By default the pool is the group's rows. ``max_examples`` caps it by
   subsampling without replacement (a fresh subset every epoch); ``min_examples`` raises it by repeating
   the group in reshuffled passes (each row appears ``floor`` or ``ceil`` of ``min / size`` times). The
   pool *size* ``n_g`` is the same every epoch; only its contents change.
2. **Group probabilities** from the pool sizes: ``proportional`` p_g ∝ n_g, ``uniform`` p_g = 1/G,
   ``temperature`` p_g ∝ n_g^(1/T) (T = 1 is proportional, T → ∞ is uniform).
3. **Quotas.** An epoch has ``examples_per_epoch`` rows (default: the sum of the pool sizes), i.e.
   ``len(sampler)`` batches. They are split over the groups by largest-remainder rounding, not by random
   draws, so every epoch realises the probabilities exactly up to one unit of rounding per group:
   ``mixed`` splits rows, ``per_task`` splits batches.
4. **Rows.** A group's quota is read from an endless stream of reshuffled passes over its pool: a quota
   above the pool size reuses rows (upsampling), one below it stops mid-pass (downsampling).
5. **Batches.**

   * ``mixed``: the rows of all groups are shuffled together and cut into batches of ``batch_size``;
     the last batch is short unless ``drop_last``. Each group fills p_g of every batch on average.
   * ``per_task``: every batch holds ``batch_size`` rows of one group. Batches are always full, so the
     epoch is rounded to whole batches (up, or down with ``drop_last``): a short batch in the middle of
     the sequence would make accelerate's ``BatchSamplerShard`` silently skip that whole round, and its
     end-of-epoch padding copies rows from the first batches, which would mix groups into a short last
     batch. The batch order is *stratified*: group g's j-th batch is placed at a random point of the j-th
     of its k_g equal slices of the epoch, so each group is spread evenly over the epoch (equal counts
     give round-robin with a shuffled order within each round).

Determinism
-----------
The batches of an epoch are a pure function of ``(seed, epoch)`` and the constructor arguments, drawn
from ``numpy.random.default_rng([seed, epoch])`` (no global RNG state). Every process of a distributed
run therefore computes the same sequence, which is what accelerate's ``BatchSamplerShard`` needs when it
hands batch ``r, r + W, r + 2W, ...`` to rank ``r``. Call :meth:`MultiTaskBatchSampler.set_epoch` before
each epoch: accelerate's ``DataLoaderShard.set_epoch`` reaches this sampler only when it is not wrapped
in a ``BatchSamplerShard`` (single process).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np
from torch.utils.data import Sampler

Composition = Literal["mixed", "per_task"]
SamplingStrategy = Literal["proportional", "uniform", "temperature"]
COMPOSITIONS: tuple[str, ...] = ("mixed", "per_task")
logger = logging.getLogger(__name__)
SAMPLING_STRATEGIES: tuple[str, ...] = ("proportional", "uniform", "temperature")


def group_weights(pool_sizes: np.ndarray, sampling: str, temperature: float) -> np.ndarray:
    """Unnormalised group probabilities: n_g (proportional), 1 (uniform) or n_g^(1/T) (temperature)."""
    if sampling == "proportional":
        return pool_sizes.astype(np.float64)
    if sampling == "uniform":
        return np.ones(len(pool_sizes), dtype=np.float64)
    return pool_sizes.astype(np.float64) ** (1.0 / temperature)


def largest_remainder_allocation(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into non-negative integers proportional to ``weights`` (Hamilton's method).

    Every share starts at ``floor(total * w_g / sum(w))``; the units still missing go to the largest
    fractional parts, ties to the earlier group. Each share is within one unit of its exact value.
    """
    # Multiply before dividing: integer weights times total stay exact, so exact quotas stay exact.
    exact_shares = weights * total / weights.sum()
    shares = np.floor(exact_shares).astype(np.int64)
    missing_units = total - int(shares.sum())
    by_remainder = np.argsort(-(exact_shares - shares), kind="stable")
    shares[by_remainder[:missing_units]] += 1
    return shares


def take_from_reshuffled_passes(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """The first ``count`` rows of an endless stream of independently shuffled passes over ``pool``.

    Rows are drawn without replacement within a pass; asking for more than ``len(pool)`` starts a new
    pass (upsampling), asking for fewer stops part-way through the first one (downsampling).
    """
    num_passes = -(-count // len(pool))  # ceil division
    passes = [rng.permutation(pool) for _ in range(num_passes)]
    return np.concatenate([pool[:0], *passes])[:count]


def stratified_batch_order(batches_per_group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permutation of group-major batch indices that spreads each group's batches evenly over the epoch.

    Batch j of group g (0 <= j < k_g) gets the sort key ``(j + u) / k_g`` with ``u ~ U[0, 1)``: a random
    point of the j-th of k_g equal slices of the epoch. Unlike a plain shuffle, a small group is never
    bunched at one end by chance, and groups with equal counts alternate in rounds.
    """
    position_in_group = np.concatenate([np.arange(count) for count in batches_per_group])
    group_batch_count = np.repeat(batches_per_group, batches_per_group)
    sort_keys = (position_in_group + rng.random(len(position_in_group))) / group_batch_count
    return np.argsort(sort_keys, kind="stable")


class MultiTaskBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset indices over consecutive groups; see the module docstring for the schedule.

    Args:
        group_sizes: Group name -> number of rows, in the order the groups are concatenated.
        batch_size: Rows per batch.
        composition: ``"mixed"`` (groups shuffled together) or ``"per_task"`` (one group per batch).
        sampling: ``"proportional"``, ``"uniform"`` or ``"temperature"`` group probabilities.
        temperature: T in p_g ∝ n_g^(1/T); used only by ``sampling="temperature"``.
        max_examples: Group name -> cap on the group's rows per epoch (subsampled without replacement).
        min_examples: Group name -> floor on the group's rows per epoch (reached by repeating the group).
        examples_per_epoch: Rows per epoch; default is the sum of group sizes after caps and floors.
        seed: Non-negative seed; with the epoch it fully determines the batches.
        drop_last: ``mixed``: drop the short last batch. ``per_task``: round the epoch down to whole
            batches instead of up.
        distinct_keys: Group name -> ``[rows, k]`` hashes of each row's texts (0 = none), for groups whose
            batches must not hold one text twice (contrastive tasks: a repeated text would be a false negative).
            A row that would repeat a text of its batch is swapped with a row of the same group from another
            batch that repeats nothing (the group shares and batch sizes stay as they were).
    """

    def __init__(
        self,
        group_sizes: Mapping[str, int],
        batch_size: int,
        composition: Composition = "mixed",
        sampling: SamplingStrategy = "proportional",
        temperature: float = 2.0,
        max_examples: Mapping[str, int] | None = None,
        min_examples: Mapping[str, int] | None = None,
        examples_per_epoch: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
        distinct_keys: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        max_examples = dict(max_examples or {})
        min_examples = dict(min_examples or {})
        _check_group_sizes(group_sizes)
        _check_choice("composition", composition, COMPOSITIONS)
        _check_choice("sampling", sampling, SAMPLING_STRATEGIES)
        _check_at_least_one("batch_size", batch_size)
        if not temperature > 0:  # also rejects NaN
            raise ValueError(f"temperature must be > 0, got {temperature}")
        _check_per_group_limits("max_examples", max_examples, group_sizes)
        _check_per_group_limits("min_examples", min_examples, group_sizes)
        _check_min_not_above_max(min_examples, max_examples)
        if examples_per_epoch is not None:
            _check_at_least_one("examples_per_epoch", examples_per_epoch)
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")

        self.group_names: list[str] = list(group_sizes)
        self.group_sizes = np.array([group_sizes[name] for name in self.group_names], dtype=np.int64)
        self.group_starts = np.cumsum(self.group_sizes) - self.group_sizes
        self.batch_size = batch_size  # read by accelerate's BatchSamplerShard
        self.drop_last = drop_last  # read by accelerate's BatchSamplerShard
        self.composition = composition
        self.sampling = sampling
        self.temperature = temperature
        self.max_examples = max_examples
        self.min_examples = min_examples
        self.seed = seed
        self.epoch = 0
        self.distinct_keys = {name: np.asarray(keys) for name, keys in (distinct_keys or {}).items()}
        for name, keys in self.distinct_keys.items():
            if name not in group_sizes or len(keys) != group_sizes[name]:
                raise ValueError(f"distinct_keys[{name!r}] must hold one row of keys per row of that group")
        self.unseparated_rows = 0  # rows left beside a repeat of their text in the last epoch drawn

        self.pool_sizes = np.array(
            [self._pool_size(name, int(size)) for name, size in zip(self.group_names, self.group_sizes)],
            dtype=np.int64,
        )
        self._weights = group_weights(self.pool_sizes, sampling, temperature)
        self.group_probabilities: dict[str, float] = dict(
            zip(self.group_names, (self._weights / self._weights.sum()).tolist())
        )
        self.examples_per_epoch = (
            int(self.pool_sizes.sum()) if examples_per_epoch is None else int(examples_per_epoch)
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next ``__iter__`` yields (same on every process)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        full_batches, leftover_rows = divmod(self.examples_per_epoch, self.batch_size)
        return full_batches + int(leftover_rows > 0 and not self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches_for_epoch(self.epoch)
        if self.unseparated_rows:
            logger.warning(
                f"Epoch {self.epoch}: {self.unseparated_rows} row(s) of {', '.join(map(repr, self.distinct_keys))} "
                "share a text with another row of their batch and could not be swapped into another batch (too "
                "few distinct texts for the batches): in-batch, that text is a false negative of the other row."
            )
        for batch in batches:
            yield batch.tolist()

    def realised_group_counts(self, epoch: int | None = None) -> dict[str, int]:
        """Rows each group contributes to the batches of ``epoch`` (default: the current epoch)."""
        batches = self._batches_for_epoch(self.epoch if epoch is None else epoch)
        rows = np.concatenate([np.empty(0, dtype=np.int64), *batches])
        group_of_row = np.searchsorted(self.group_starts, rows, side="right") - 1
        counts = np.bincount(group_of_row, minlength=len(self.group_names))
        return dict(zip(self.group_names, counts.tolist()))

    def _pool_size(self, name: str, size: int) -> int:
        """Rows of group ``name`` per epoch after its cap and floor."""
        size = min(size, self.max_examples.get(name, size))
        return max(size, self.min_examples.get(name, size))

    def _batches_for_epoch(self, epoch: int) -> list[np.ndarray]:
        # A list seed feeds SeedSequence, so (seed=0, epoch=1) and (seed=1, epoch=0) differ,
        # which default_rng(seed + epoch) would not guarantee.
        rng = np.random.default_rng([self.seed, epoch])
        pools = self._epoch_pools(rng)
        if self.composition == "mixed":
            batches = self._mixed_batches(pools, rng)
        else:
            batches = self._per_task_batches(pools, rng)
        return self._separate_repeated_texts(batches) if self.distinct_keys else batches

    def _row_keys(self, row: int) -> frozenset:
        """The text hashes of a dataset row of a distinct-text group (empty for every other row)."""
        group = self._group_of(row)
        keys = self.distinct_keys.get(self.group_names[group])
        if keys is None:
            return frozenset()
        return frozenset(int(key) for key in keys[row - self.group_starts[group]] if key)

    def _separate_repeated_texts(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Swap rows so that no batch holds a text twice among the distinct-text groups' rows (see the
        constructor); deterministic. Rows that find no partner stay (counted in `unseparated_rows`)."""
        batches = [batch.copy() for batch in batches]
        keys = [[self._row_keys(int(row)) for row in batch] for batch in batches]
        counts = [Counter(key for row_keys in batch_keys for key in row_keys) for batch_keys in keys]

        def repeats(c: int, row_keys: frozenset, leaving: frozenset = frozenset()) -> bool:
            """Would a row with `row_keys` repeat a text of batch c once a row with `leaving` left it?"""
            return any(counts[c][key] - (key in leaving) > 0 for key in row_keys)

        unseparated = 0
        for b, batch in enumerate(batches):
            for position in range(len(batch)):
                row_keys = keys[b][position]
                if not row_keys or not repeats(b, row_keys, leaving=row_keys):
                    continue
                group = self._group_of(int(batch[position]))
                partner = next(
                    (
                        (c, q)
                        for c in [*range(b + 1, len(batches)), *range(b)]  # later batches first
                        for q, candidate in enumerate(batches[c])
                        if keys[c][q]
                        and self._group_of(int(candidate)) == group
                        and not repeats(b, keys[c][q], leaving=row_keys)
                        and not repeats(c, row_keys, leaving=keys[c][q])
                    ),
                    None,
                )
                if partner is None:
                    unseparated += 1
                    continue
                c, q = partner
                batch[position], batches[c][q] = batches[c][q], batch[position]
                counts[b].subtract(row_keys)
                counts[b].update(keys[c][q])
                counts[c].subtract(keys[c][q])
                counts[c].update(row_keys)
                keys[b][position], keys[c][q] = keys[c][q], row_keys
        self.unseparated_rows = unseparated
        return batches

    def _group_of(self, row: int) -> int:
        return int(np.searchsorted(self.group_starts, row, side="right") - 1)

    def _epoch_pools(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Each group's epoch pool (global row indices), capped or repeated to its pool size."""
        return [
            take_from_reshuffled_passes(np.arange(start, start + size), int(pool_size), rng)
            for start, size, pool_size in zip(self.group_starts, self.group_sizes, self.pool_sizes)
        ]

    def _mixed_batches(self, pools: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        row_quotas = largest_remainder_allocation(self.examples_per_epoch, self._weights)
        quota_rows = [take_from_reshuffled_passes(pool, int(q), rng) for pool, q in zip(pools, row_quotas)]
        epoch_rows = rng.permutation(np.concatenate(quota_rows))
        # With drop_last this cuts the short tail; otherwise len(self) * batch_size covers every row.
        epoch_rows = epoch_rows[: len(self) * self.batch_size]
        return [epoch_rows[i : i + self.batch_size] for i in range(0, len(epoch_rows), self.batch_size)]

    def _per_task_batches(self, pools: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        batches_per_group = largest_remainder_allocation(len(self), self._weights)
        group_rows = [
            take_from_reshuffled_passes(pool, int(k) * self.batch_size, rng)
            for pool, k in zip(pools, batches_per_group)
        ]
        group_major_batches = np.concatenate(group_rows).reshape(-1, self.batch_size)
        return list(group_major_batches[stratified_batch_order(batches_per_group, rng)])


def _check_group_sizes(group_sizes: Mapping[str, int]) -> None:
    if len(group_sizes) == 0:
        raise ValueError("group_sizes is empty: need at least one group")
    for name, size in group_sizes.items():
        if size < 1:
            raise ValueError(f"group {name!r} has size {size}; every group needs at least one row")


def _check_choice(argument: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {argument} {value!r}; valid values: {', '.join(map(repr, valid))}")


def _check_at_least_one(argument: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{argument} must be >= 1, got {value}")


def _check_per_group_limits(argument: str, limits: Mapping[str, int], group_sizes: Mapping[str, int]) -> None:
    for name, limit in limits.items():
        if name not in group_sizes:
            raise ValueError(f"{argument} names {name!r}, which is not a group; groups: {list(group_sizes)}")
        _check_at_least_one(f"{argument}[{name!r}]", limit)


def _check_min_not_above_max(min_examples: Mapping[str, int], max_examples: Mapping[str, int]) -> None:
    for name, minimum in min_examples.items():
        if name in max_examples and minimum > max_examples[name]:
            raise ValueError(
                f"min_examples[{name!r}] = {minimum} exceeds max_examples[{name!r}] = {max_examples[name]}"
            )
