"""Evaluation seeds never overlap training seeds.

`controller.collect` runs its episodes on world seeds S, S+1, ... from S=0
and records each episode's seed in the dataset's `meta/episodes` table; an
evaluation uses seeds from `DEFAULT_SEED` on, far from any collection's
range, and with `--dataset DIR` refuses seeds that dataset's episodes used.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

#: First world seed of an evaluation by default: far from collections starting at 0.
DEFAULT_SEED = 1_000_000
#: The column of `meta/episodes` holding an episode's world seed.
SEED_COLUMN = "seed"


class SeedError(ValueError):
    """A dataset that cannot be read for its seeds, or evaluation seeds that overlap them."""


def dataset_seeds(root: str | Path) -> set[int] | None:
    """The world seeds a LeRobot v3 dataset's episodes were recorded with.

    None when the dataset does not record them (its `meta/episodes` has no
    `seed` column): the caller warns and goes on. A directory that is not a
    LeRobot v3 dataset, or whose tables cannot be read, is a `SeedError`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(root)
    if not path.is_dir():
        raise SeedError(f"dataset {str(path)!r}: no such directory")
    if not (path / "meta" / "info.json").is_file():
        raise SeedError(f"dataset {str(path)!r} is not a LeRobot v3 dataset (no meta/info.json)")
    files = sorted((path / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise SeedError(f"dataset {str(path)!r} has no episodes (no meta/episodes/*/*.parquet)")
    seeds: set[int] = set()
    recorded = False
    for file in files:
        try:
            if SEED_COLUMN not in pq.read_schema(file).names:
                continue  # episodes appended by a run that had no world seed
            column = pq.read_table(file, columns=[SEED_COLUMN]).column(SEED_COLUMN)
        except (OSError, pa.ArrowException) as exc:
            raise SeedError(f"dataset {str(path)!r}: cannot read {file.name}: {exc}") from None
        recorded = True
        seeds.update(int(v) for v in column.to_pylist() if v is not None)
    return seeds if recorded else None


def check_disjoint(seeds: Sequence[int], used: Iterable[int], dataset: str | Path) -> None:
    """Refuse evaluation seeds that a dataset's episodes used, naming some and a way out."""
    used = set(used)
    overlap = sorted(used.intersection(seeds))
    if overlap:
        shown = ", ".join(map(str, overlap[:5])) + (" ..." if len(overlap) > 5 else "")
        raise SeedError(
            f"seeds {seeds[0]}..{seeds[-1]} overlap {len(overlap)} training seed(s) of dataset"
            f" {str(dataset)!r} ({shown}); pass --seed {max(used) + 1} or higher"
        )
