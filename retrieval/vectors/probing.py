"""Which inverted lists a filtered IVF search probes, nearest first, and how many allowed rows each holds.

Why: a filtered search probes only lists that hold allowed specimens, until they hold enough of them (index.py,
`_filtered_ivf`). Knowing that takes a count of allowed rows per list. Counting every list at once is one gather and
one bincount over the filter's rows: cheap for a thin filter, but 4-5 ms for a filter passing 1.25M of 5M specimens,
more than the list scan it prepares. The search only needs the counts of the lists nearest the query, so a large
filter counts those alone, a chunk of lists at a time, against the filter's bitmap (`AllowedSet.count_lists`,
remembered for the next query): the lists chosen are the same as with every list counted.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# A filter with more rows than this many times the entries a search walks counts only the lists it walks: a bitmap test
# costs about twice a bincount per element (5M, warm: 8-10 ns a walked entry, 5 ns a row of a large filter).
LAZY_COUNT_RATIO = 2.0


def cut(lists: np.ndarray, allowed: np.ndarray, entries: np.ndarray, per_search: float, fetch: int,
        scan: float) -> np.ndarray:
    """The first of `lists` (nearest first, each holding allowed rows) until they hold twice `per_search` allowed
    rows or `scan` times `per_search` entries, and never fewer than `fetch` allowed rows while lists remain."""
    allowed_cum, entries_cum = np.cumsum(allowed), np.cumsum(entries)
    enough = min(np.searchsorted(allowed_cum, 2 * per_search), np.searchsorted(entries_cum, scan * per_search))
    enough = max(enough, np.searchsorted(allowed_cum, fetch))
    return lists[:int(enough) + 1]


def _enough(allowed: int, entries: int, per_search: float, fetch: int, scan: float) -> bool:
    """Whether lists holding this many allowed rows and entries reach `cut`'s limit."""
    return allowed >= fetch and (allowed >= 2 * per_search or entries >= scan * per_search)


def lists_to_probe(coarse: np.ndarray, sizes: np.ndarray, per_search: float, fetch: int, scan: float, *,
                   counts: np.ndarray | None = None,
                   count_lists: Callable[[np.ndarray], np.ndarray] | None = None,
                   give_up: float = np.inf) -> np.ndarray | None:
    """The lists to probe, nearest first (`coarse`: the query's score against every list's centroid).

    With `counts` (allowed rows in every list): from the lists holding any. Without: `count_lists(lists)` counts a
    chunk of the nearest lists at a time until `cut`'s limit is reached; None once the lists walked hold more than
    `give_up` entries (counting every list then costs less). `scan`: see `cut`."""
    if counts is not None:
        holding = np.flatnonzero(counts)
        order = holding[np.argsort(-coarse[holding], kind="stable")]
        return cut(order, counts[order], sizes[order], per_search, fetch, scan)
    assert count_lists is not None
    order = np.argsort(-coarse, kind="stable")
    step = max(1, int(np.searchsorted(np.cumsum(sizes[order]), scan * per_search)) + 1)
    lists: list[np.ndarray] = []
    allowed: list[np.ndarray] = []
    allowed_total = entries_total = walked = 0
    for lo in range(0, len(order), step):
        chunk = order[lo:lo + step]
        counted = count_lists(chunk)
        walked += int(sizes[chunk].sum())
        lists.append(chunk[counted > 0])
        allowed.append(counted[counted > 0])
        allowed_total += int(allowed[-1].sum())
        entries_total += int(sizes[lists[-1]].sum())
        if _enough(allowed_total, entries_total, per_search, fetch, scan):
            break
        if walked > give_up:
            return None
    held = np.concatenate(lists)
    return cut(held, np.concatenate(allowed), sizes[held], per_search, fetch, scan)
