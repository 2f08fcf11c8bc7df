"""Building a filter's allowed set at herbarium scale: dictionary codes against pandas string operations.

    .venv/bin/python bench/bench_filters.py --rows 1000000 --repeat 9

A synthetic specimen table (600 families, 150 countries, 40 institutions, in random order); the versions run in
one process on the same table, interleaved: pandas string operations, dictionary codes of a DataFrame, and the
served `SpecimenTable` (Arrow dictionary columns, as memory-mapped from specimens.arrow); prints p50 per filter
and the one-off cost of the codes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.collections import SpecimenTable  # noqa: E402
from retrieval.filters import column_codes, filter_mask, parse_filters  # noqa: E402


def pandas_mask(table: pd.DataFrame, column: str, wanted: list[str]) -> np.ndarray:
    """The string-operation mask `retrieval/filters.py` built before the codes."""
    return table[column].fillna("").astype(str).str.casefold().isin({w.casefold() for w in wanted}).to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "specimen_id": np.arange(args.rows),
        "family": np.array([f"Family{i}" for i in range(600)], dtype=object)[rng.zipf(1.3, args.rows) % 600],
        "country": np.array([f"Country{i}" for i in range(150)], dtype=object)[rng.integers(0, 150, args.rows)],
        "institutionCode": np.array([f"INST{i}" for i in range(40)], dtype=object)[rng.integers(0, 40, args.rows)],
    })
    t0 = time.perf_counter()
    for column in ("family", "country", "institutionCode"):
        column_codes(table, column)
    once = time.perf_counter() - t0
    served = SpecimenTable.from_pandas(table)
    t0 = time.perf_counter()
    for column in ("family", "country", "institutionCode"):
        served.codes(column)
    served_once = time.perf_counter() - t0
    cases = {"family (common)": ("family", ["Family1"]), "country": ("country", ["Country7"]),
             "institution, 2 values": ("institutionCode", ["INST3", "inst4"])}
    for label, (column, wanted) in cases.items():
        times: dict[str, list[float]] = {"pandas": [], "codes": [], "served": []}
        for i in range(args.repeat):
            kinds = ("pandas", "codes", "served")
            for kind in (kinds if i % 2 else kinds[::-1]):
                t = time.perf_counter()
                if kind == "pandas":
                    mask = pandas_mask(table, column, wanted)
                else:
                    mask = filter_mask(table if kind == "codes" else served, parse_filters({column: wanted}))
                times[kind].append(time.perf_counter() - t)
                assert (pandas_mask(table, column, wanted) == mask).all()
        p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"{label:>24}: pandas {p50['pandas']:7.1f} ms  codes {p50['codes']:6.1f} ms  served table "
              f"{p50['served']:6.1f} ms ({p50['pandas'] / p50['served']:.0f}x; {int(mask.sum()):,} pass)")
    print(f"codes of 3 columns, once per loaded table: DataFrame {once * 1000:.0f} ms, served table (read from its "
          f"dictionaries) {served_once * 1000:.0f} ms; rows: {args.rows:,}")


if __name__ == "__main__":
    main()
