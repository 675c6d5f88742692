r"""In-memory data for the engine: batches by slicing tensors, resumable mid-epoch, sharded for DDP.

:class:`TensorBatches` draws epoch ``e``'s order from a generator seeded with ``seed · 1000003 + e`` (so it needs no
global RNG), yields the global batch's slice for this process (rank ``r`` of ``w`` gets rows
``[r·B/w, (r+1)·B/w)`` of each global batch of ``B``, so the averaged gradient over processes equals the
single-process one), and implements ``state_dict``/``load_state_dict`` so a run resumed from a
mid-epoch checkpoint continues with the very next batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor

__all__ = ["TensorBatches", "TensorDataModule"]


class TensorBatches:
    """An epoch iterable of batches cut from a tensor (a Lightning-compatible stateful "data loader").

    Arguments:
        data: The whole split, shape ``(N, *data_shape)``.
        batch_size: The global batch size ``B`` (over all processes).
        labels: Class labels ``(N,)``; batches are then ``(x, c)`` pairs.
        shuffle: Whether each epoch uses a fresh seeded permutation.
        seed: Base seed of the permutations.
        drop_last: Whether to drop a final incomplete batch.
        rank: This process's rank.
        world_size: Number of processes; ``B`` must be divisible by it.

    Example:
        >>> batches = TensorBatches(torch.arange(10.0)[:, None], 4, shuffle=False)
        >>> [b.shape[0] for b in batches]
        [4, 4, 2]
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        labels: Tensor | None = None,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"data.batch_size={batch_size} must be divisible by the number of processes {world_size}")
        self.data = data
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        #: Batches of the current epoch already trained on; maintained by the engine (see ``state_dict``).
        self.consumed = 0
        self._resume: tuple[int, int] | None = None
        # Lightning calls ``sampler.set_epoch(e)`` on every loader at the start of each epoch.
        self.sampler = self
        self.batch_sampler = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.data.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
        # A generator: the order is drawn lazily at the first ``next``, after ``set_epoch`` / ``load_state_dict``.
        n = self.data.shape[0]
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=gen).to(self.data.device)  # one copy per epoch, none per batch
        else:
            order = None
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        per_rank = self.batch_size // self.world_size
        for i in range(start, len(self)):
            lo = i * self.batch_size
            hi = min(lo + self.batch_size, n)
            # A short last batch is split as evenly as possible across ranks.
            share = -(-(hi - lo) // self.world_size) if hi - lo < self.batch_size else per_rank
            a, b = lo + self.rank * share, min(lo + (self.rank + 1) * share, hi)
            if a >= b:
                a, b = hi - 1, hi  # never yield an empty batch
            idx = order[a:b] if order is not None else slice(a, b)
            yield self.data[idx] if self.labels is None else (self.data[idx], self.labels[idx])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= len(self):  # saved at the end of an epoch: continue with the next one
            epoch, consumed = epoch + 1, 0
        self.epoch = epoch
        self._resume = (epoch, consumed)


class TensorDataModule(L.LightningDataModule):
    """A data module over in-memory train/validation tensors.

    Arguments:
        train: Training data ``(N, *data_shape)``.
        val: Validation data or ``None``.
        batch_size: Global training batch size.
        val_batch_size: Validation batch size (default: ``batch_size``).
        seed: Seed of the epoch permutations.
        drop_last: Whether to drop an incomplete final training batch.
        train_labels, val_labels: Class labels of the splits (conditional models).
    """

    def __init__(
        self,
        train: Tensor,
        val: Tensor | None = None,
        *,
        batch_size: int = 256,
        val_batch_size: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
        train_labels: Tensor | None = None,
        val_labels: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.train_data, self.val_data = train, val
        self.train_labels, self.val_labels = train_labels, val_labels
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.train_batches: TensorBatches | None = None
        self._pending_state: dict[str, Any] | None = None

    # Lightning saves and restores a data module's state with the checkpoint. We carry the loader's position
    # here because Lightning creates the training loader (to count steps) before it would restore it.
    def state_dict(self) -> dict[str, Any]:
        return {"train_batches": self.train_batches.state_dict()} if self.train_batches is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict.get("train_batches")

    def _dist(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _on_device(self, data: Tensor | None, labels: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """A split (and its labels) on the training device when that is a GPU with room for it (a quarter of its free
        memory).

        Batches cut from a CPU tensor are copied to the GPU every step from pageable memory, and such a copy holds
        the host until the device has finished the work queued before it: a hidden synchronisation per step. A split
        moved once is cut on the device instead.
        """
        trainer = self.trainer
        if data is None or trainer is None:
            return data, labels
        device = trainer.strategy.root_device
        if device.type != "cuda" or data.device == device:
            return data, labels
        free, _ = torch.cuda.mem_get_info(device)
        if data.numel() * data.element_size() > free // 4:
            return data, labels
        return data.to(device), None if labels is None else labels.to(device)

    def train_dataloader(self) -> TensorBatches:
        rank, world = self._dist()
        self.train_data, self.train_labels = self._on_device(self.train_data, self.train_labels)
        self.train_batches = TensorBatches(
            self.train_data, self.batch_size, shuffle=True, seed=self.seed, drop_last=self.drop_last, rank=rank,
            world_size=world, labels=self.train_labels,
        )
        if self._pending_state is not None:
            self.train_batches.load_state_dict(self._pending_state)
        return self.train_batches

    def val_dataloader(self) -> TensorBatches | list:
        if self.val_data is None:
            return []
        rank, world = self._dist()
        self.val_data, self.val_labels = self._on_device(self.val_data, self.val_labels)
        vb = self.val_batch_size - self.val_batch_size % world or world
        return TensorBatches(self.val_data, vb, shuffle=False, rank=rank, world_size=world, labels=self.val_labels)
