"""How datasets reach workers: equal, deterministic shards, split before the workers start.

Ray Train's default `streaming_split` hands out blocks dynamically and runs Ray Data tasks while
the workers hold every CPU. fmstack splits its materialized datasets in the driver with
`Dataset.split(equal=True)` instead: the same recipe gives every rank the same rows in the same
order (ZeRO stages stay comparable, a resumed run finds its data position again), and nothing
needs a free CPU during training. Workers still read through `ray.train.get_dataset_shard`.
"""

from __future__ import annotations

from typing import Any

from ray.train import DataConfig


class EqualSplit(DataConfig):
    def __init__(self, datasets: dict[str, Any], world_size: int) -> None:
        super().__init__()
        self._world_size = world_size
        self._parts = {name: ds.split(world_size, equal=True) for name, ds in datasets.items()}

    def configure(
        self,
        datasets: dict[str, Any],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        if world_size != self._world_size:
            raise ValueError(
                f"datasets were split for {self._world_size} workers, not {world_size}"
            )
        return [
            {name: parts[rank].iterator() for name, parts in self._parts.items()}
            for rank in range(world_size)
        ]
