"""A task: named train / val / test splits with local labels 0..n_classes-1."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

import torch
from torch import Tensor


class Split(Protocol):
    """What the trainer needs of a split, whether tensor-held or read from image files."""

    def __len__(self) -> int: ...

    @property
    def deterministic(self) -> bool:
        """True when a given example always yields the same input (no random augmentation)."""
        ...

    def to(self, device: torch.device) -> "Split": ...

    def gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Examples at `index` (1-D long tensor) as (x, y) on the split's device."""
        ...

    def batches(self, index_batches: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """Training batches for the given index batches, in order (image splits load them in
        DataLoader workers and augment them; tensor splits gather them)."""
        ...

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Every example once, in order, without augmentation."""
        ...


@dataclass
class TensorSplit:
    """A split held as tensors (on the training device), batched by index.

    `pixel_map`, when set, gives each pixel of a gathered example (its flattened position) the position of the
    stored pixel it shows, or the number of pixels for a blank (0): a permutation (permuted tasks), or a nearest-
    neighbour rotation whose corners are blank (rotated tasks). So such tasks share one copy of the images.
    """

    x: Tensor
    y: Tensor
    pixel_map: Tensor | None = None
    blanks: bool = field(init=False, repr=False)  # whether the map shows a blank anywhere

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} examples but y has {len(self.y)}")
        pixels = self.x[0].numel() if len(self.x) else 0
        self.blanks = self.pixel_map is not None and bool((self.pixel_map == pixels).any())

    def __len__(self) -> int:
        return len(self.y)

    @property
    def deterministic(self) -> bool:
        return True

    def to(self, device: torch.device) -> "TensorSplit":
        pixel_map = None if self.pixel_map is None else self.pixel_map.to(device)
        return TensorSplit(self.x.to(device), self.y.to(device), pixel_map)

    def _mapped(self, x: Tensor) -> Tensor:
        """The batch's pixels mapped; index_select, several times faster on CPU than `[:, map]`."""
        if self.pixel_map is None:
            return x
        flat = x.flatten(1)
        if self.blanks:
            flat = torch.nn.functional.pad(flat, (0, 1))
        return flat.index_select(1, self.pixel_map).view_as(x)

    def gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        index = index.to(self.y.device, non_blocking=True)  # a host index (the trainer's batches) copied without a sync
        return self._mapped(self.x.index_select(0, index)), self.y.index_select(0, index)

    def batches(self, index_batches: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        for index in index_batches:
            yield self.gather(index)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self._mapped(self.x[start : start + batch_size]), self.y[start : start + batch_size]


class ConcatSplit:
    """Several splits seen as one (joint training); `task_ids` gives each example's task."""

    def __init__(self, splits: list[Split], task_ids: list[int]):
        self.splits = splits
        sizes = torch.tensor([len(s) for s in splits])
        self.starts = torch.cumsum(sizes, 0) - sizes
        self.task_ids = torch.repeat_interleave(torch.tensor(task_ids), sizes)

    def __len__(self) -> int:
        return len(self.task_ids)

    @property
    def deterministic(self) -> bool:
        return all(s.deterministic for s in self.splits)

    def to(self, device: torch.device) -> "ConcatSplit":
        return ConcatSplit([s.to(device) for s in self.splits], self.task_ids.unique_consecutive().tolist())

    def gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        index = index.cpu()
        part = torch.bucketize(index, self.starts, right=True) - 1
        xs, ys, order = [], [], []
        for p in part.unique().tolist():
            where = (part == p).nonzero().squeeze(1)
            x, y = self.splits[p].gather(index[where] - self.starts[p])
            xs.append(x)
            ys.append(y)
            order.append(where)
        inverse = torch.argsort(torch.cat(order)).to(xs[0].device, non_blocking=True)
        return torch.cat(xs)[inverse], torch.cat(ys)[inverse]

    def batches(self, index_batches: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        for index in index_batches:
            yield self.gather(index)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for split in self.splits:
            yield from split.eval_batches(batch_size)


class SubsetSplit:
    """Rows `rows` of a split as a split of their own, in that order (BiC trains on its task's split less the rows
    it holds out)."""

    def __init__(self, split: Split, rows: Tensor):
        self.split = split
        self.rows = rows.cpu()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def deterministic(self) -> bool:
        return self.split.deterministic

    def to(self, device: torch.device) -> "SubsetSplit":
        return SubsetSplit(self.split.to(device), self.rows)

    def gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.split.gather(self.rows[index.cpu()])

    def batches(self, index_batches: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        return self.split.batches(self.rows[index.cpu()] for index in index_batches)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self.split.gather(self.rows[start : start + batch_size])


@dataclass
class Task:
    """One task of a sequence: its splits, its class names and the shape of one input."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    input_shape: tuple[int, ...]
    info: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device) -> "Task":
        return Task(
            self.name,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.class_names,
            self.input_shape,
            self.info,
        )
