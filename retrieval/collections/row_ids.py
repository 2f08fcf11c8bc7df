"""Specimen ids that a filter passes, held as the table's row positions plus the first id.

Why: a collection numbers its specimens as one run (AUTOINCREMENT), so the ids of table rows are the rows plus
the first id. At 5M specimens a filter passing 95% of them (a country, in a national herbarium) would build 38 MB of
int64 ids (9 ms), which the index then checks are sorted (3 ms) and turns back into its own rows. `RowIds` keeps
the filter's sorted rows as they came: the index reads them as its rows when both number the same run
(`retrieval.vectors.allowed`), and everyone else gets the ids from `np.asarray`, built once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class RowIds:
    """Ids `rows + first`, ascending and without repeats (`rows` sorted, unique, read-only); immutable."""

    __slots__ = ("rows", "first", "_ids", "__weakref__")

    def __init__(self, rows: np.ndarray, first: int) -> None:
        rows = np.asarray(rows).ravel()
        if rows.dtype.kind not in "iu":
            raise TypeError(f"row positions must be integers, not {rows.dtype}")
        rows = rows.view()
        rows.setflags(write=False)
        self.rows, self.first = rows, int(first)
        self._ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + (0 if self._ids is None else self._ids.nbytes)

    @property
    def ids(self) -> np.ndarray:
        """The ids as int64 (read-only), built at first use."""
        if self._ids is None:
            ids = np.add(self.rows, self.first, dtype=np.int64)
            ids.setflags(write=False)
            self._ids = ids
        return self._ids

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if dtype is not None and np.dtype(dtype) != np.int64:
            return self.ids.astype(dtype)
        return self.ids.copy() if copy else self.ids  # np.array() asks for a copy it may write to

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids.tolist())

    def tolist(self) -> list[int]:
        return self.ids.tolist()

    def contains(self, ids: Any) -> np.ndarray:
        """Which of `ids` are held (a binary search each among the rows; the ids are never built)."""
        wanted = np.asarray(ids, dtype=np.int64).ravel() - self.first
        if not len(self.rows):
            return np.zeros(len(wanted), dtype=bool)
        inside = (wanted >= 0) & (wanted <= np.iinfo(self.rows.dtype).max)
        wanted = np.where(inside, wanted, 0).astype(self.rows.dtype)  # the rows' type: no int64 copy of the rows
        at = np.minimum(np.searchsorted(self.rows, wanted), len(self.rows) - 1)
        return inside & (self.rows[at] == wanted)

    def __repr__(self) -> str:
        return f"RowIds({len(self)} ids from {self.first})"
