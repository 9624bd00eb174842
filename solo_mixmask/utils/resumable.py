"""A training DataLoader whose order, augmentations and position survive a kill.

Three pieces make a resumed epoch see exactly the batches an uninterrupted run would have seen:

- :class:`ResumableSampler` draws the epoch's order from ``(seed, epoch)`` alone (a fresh
  generator per epoch, never the global RNG), splits it between ranks like
  ``DistributedSampler(drop_last=True)`` and can start ``skip`` batches into the epoch.
- :class:`SeededItems` seeds torch's, numpy's and python's global RNGs from
  ``(seed, epoch, index)`` around each ``dataset[index]`` call, so an image's random crop,
  jitter, flip... depend on the image and the epoch only: not on which worker, which rank or
  how many batches came before. This holds for any ``num_workers``.
- :class:`ResumableLoader` is a ``DataLoader`` with ``state_dict``/``load_state_dict``
  (Lightning's ``_Stateful`` protocol): Lightning stores ``{"epoch", "batches_done", ...}`` in
  ``checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]`` and hands it back before
  it creates the resumed epoch's iterator.

``batches_done`` counts batches whose training step finished; it is set from the training loop
(:class:`~solo_mixmask.callbacks.ResumeState` writes ``batch_idx + 1`` after every step), never
from how far the loader has pre-fetched.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from solo_mixmask.errors import CheckpointError

_MASK64 = (1 << 64) - 1


def keep_batch(batch: Any) -> Any:
    """A collate function that hands the batch on as it is (the in-memory and DALI loaders
    make whole batches themselves)."""
    return batch


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64 over the parts); platform independent."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


class SeededItems(Dataset):
    """``dataset`` whose item ``(index, item_seed)`` is drawn with all global RNGs seeded.

    ``self[(i, s)]`` returns ``dataset[i]`` computed under ``torch.manual_seed(s)``,
    ``random.seed(s)`` and ``np.random.seed(s % 2**32)``; the caller's RNG states are put back
    afterwards (so with ``num_workers=0`` the training process's streams are untouched).
    A plain integer key reads ``dataset[key]`` with no seeding.

    A dataset that makes whole batches itself (it has ``__getitems__``, as the in-memory path's)
    receives the batch's keys unchanged through ``__getitems__`` and draws its randomness from
    their item seeds; the global RNGs are not touched.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        if hasattr(dataset, "__getitems__"):  # DataLoader then fetches a batch in one call
            self.__getitems__ = dataset.__getitems__

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, item_seed = key
        torch_state = torch.get_rng_state()
        py_state = random.getstate()
        np_state = np.random.get_state()
        try:
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            np.random.seed(item_seed % 2**32)
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)


class ResumableSampler(DistributedSampler):
    """Per-epoch shuffled indices of this rank, as ``(index, item_seed)`` pairs.

    Epoch ``e`` permutes ``range(N)`` with a generator seeded by ``mix_seed(seed, e)``; rank ``r``
    of ``W`` takes positions ``r, r + W, ...`` of the first ``W * (N // W)`` (the tail is
    dropped, as ``DistributedSampler(drop_last=True)``). ``item_seed = mix_seed(seed, e, index)``.
    Being a ``DistributedSampler``, Lightning leaves it in place under DDP (it does not wrap it)
    and calls :meth:`set_epoch` at every epoch start.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        super().__init__(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size = int(batch_size)
        self.size = len(dataset)  # type: ignore[arg-type]
        self._skip_epoch: int | None = None
        self._skip_batches = 0

    def __len__(self) -> int:
        return self.size // self.num_replicas

    def skip(self, epoch: int, batches: int) -> None:
        """Make the next pass over ``epoch`` start after its first ``batches`` batches."""
        self.set_epoch(epoch)
        self._skip_epoch, self._skip_batches = int(epoch), int(batches)

    def indices(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch``, in order (``len(self)`` of them)."""
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = torch.randperm(self.size, generator=gen)
        per_rank = len(self)
        return order[self.rank : per_rank * self.num_replicas : self.num_replicas].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = int(self.epoch)
        start = 0
        if self._skip_epoch == epoch:
            start = self._skip_batches * self.batch_size
            self._skip_epoch = None
        for index in self.indices(epoch)[start:]:
            yield index, mix_seed(self.seed, epoch, index)


class ResumableLoader(DataLoader):
    """A shuffled, drop-last training loader over :class:`SeededItems` + :class:`ResumableSampler`.

    ``batches_done`` must be kept up to date by the training loop (batches of the current epoch
    whose step has finished); ``state_dict()`` records it with the sampler's epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        worker_init_fn: Callable[[int], None] | None = None,
        collate_fn: Callable[[Any], Any] | None = None,
    ):
        items = SeededItems(dataset)
        sampler = ResumableSampler(items, batch_size, seed, rank, world_size)
        super().__init__(
            items,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            worker_init_fn=worker_init_fn,
            collate_fn=collate_fn,
            # the iterator's base seed: from here, not from the global RNG
            generator=torch.Generator().manual_seed(int(seed)),
        )
        self.resumable_sampler = sampler  # ``self.sampler``, with its own type
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.batches_done = 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches_done", "batch_size", "world_size", "seed", "num_batches"}``."""
        return {
            "epoch": int(self.resumable_sampler.epoch),
            "batches_done": int(self.batches_done),
            "batch_size": int(self.batch_size or 0),
            "world_size": self.world_size,
            "seed": self.seed,
            "num_batches": len(self),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Position the sampler after the batches already trained in the saved epoch (a
        finished epoch moves to the next one).

        CheckpointError when this loader's batch size, world size or seed is not the
        checkpoint's: its position would not name the same images, and the restored
        learning-rate schedule counts the checkpoint's steps (``resume`` refuses another world
        size before the fit; batch size and seed come from the run's ``config.yaml``).
        """
        ours = (self.batch_size, self.world_size, self.seed)
        saved = (state.get("batch_size"), state.get("world_size"), state.get("seed", self.seed))
        if saved != ours:
            names = ("batch_size", "world_size", "seed")
            raise CheckpointError(
                "the checkpoint's training loader ran "
                + ", ".join(f"{k}={v}" for k, v in zip(names, saved, strict=True))
                + "; this run's has "
                + ", ".join(f"{k}={v}" for k, v in zip(names, ours, strict=True))
                + ": a resume goes on with the batch size, processes and seed the run was "
                "trained with; resume with those, or start a new run (solo-mixmask pretrain)"
            )
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):
            epoch, done = epoch + 1, 0
        self.batches_done = done
        self.resumable_sampler.skip(epoch, done)


def resumable_train_loader(
    loader: DataLoader, seed: int, rank: int = 0, world_size: int = 1
) -> ResumableLoader:
    """The same data, batch size, workers, pinning and collate function as ``loader``, made
    resumable."""
    return ResumableLoader(
        loader.dataset,
        batch_size=int(loader.batch_size or 1),
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        collate_fn=loader.collate_fn,
    )
