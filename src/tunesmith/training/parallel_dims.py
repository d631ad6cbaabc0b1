"""The parallel layout of a run: data-parallel replicate x shard (FSDP2 / HSDP) x tensor parallel.

torchtune's keys: ``tensor_parallel_dim`` (default 1), ``data_parallel_shard_dim`` (default
-1: whatever the world size leaves), ``data_parallel_replicate_dim`` (default 1; > 1 is HSDP:
FSDP2 shards within each replica group and all-reduces across them). Their product is the
world size. One ``DeviceMesh`` with named dims ``("dp_replicate", "dp_shard", "tp")``
(row-major, so the tensor-parallel ranks of a group are neighbours, as on one node).

Ranks of one tensor-parallel group read the same batch: the sampler is split over the
data-parallel ranks only (:attr:`ParallelDims.dp_size`, :meth:`ParallelDims.dp_rank`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.config import ConfigError

__all__ = ["ParallelDims"]

_KEYS = ("tensor_parallel_dim", "data_parallel_shard_dim", "data_parallel_replicate_dim")


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of each parallel dimension; ``dp_replicate * dp_shard * tp == world_size``."""

    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int

    @classmethod
    def from_config(cls, cfg: Any, world_size: int) -> ParallelDims:
        """Read the three keys of ``cfg`` (a mapping) and check them against ``world_size``;
        a :class:`ConfigError` naming the key otherwise (before anything is built)."""
        values = {}
        for key, default in zip(_KEYS, (1, -1, 1)):
            raw = cfg.get(key)
            value = default if raw is None else raw
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key}={raw!r} is not an integer", key=key)
            if value < 1 and not (key == "data_parallel_shard_dim" and value == -1):
                allowed = "an integer >= 1, or -1 to infer" if "shard" in key else ">= 1"
                raise ConfigError(f"{key}={value}: give {allowed}", key=key)
            values[key] = value
        tp, shard, rep = (values[k] for k in _KEYS)
        if shard == -1:
            if world_size % (tp * rep):
                raise ConfigError(
                    f"tensor_parallel_dim={tp} x data_parallel_replicate_dim={rep} does not "
                    f"divide the world size {world_size} (processes): pick degrees whose "
                    "product divides it, or change --nproc_per_node / --nnodes",
                    key="tensor_parallel_dim" if tp > 1 else "data_parallel_replicate_dim",
                )
            shard = world_size // (tp * rep)
        if rep * shard * tp != world_size:
            raise ConfigError(
                f"the mesh data_parallel_replicate_dim={rep} x data_parallel_shard_dim={shard} x "
                f"tensor_parallel_dim={tp} = {rep * shard * tp} processes does not match the "
                f"world size {world_size}: set data_parallel_shard_dim=-1 or launch "
                f"{rep * shard * tp} processes",
                key="data_parallel_shard_dim",
            )
        return cls(dp_replicate=rep, dp_shard=shard, tp=tp, world_size=world_size)

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks (replicas x shards): what the batch is split over."""
        return self.dp_replicate * self.dp_shard

    @property
    def needs_mesh(self) -> bool:
        """True unless this is plain FSDP2 over every rank (or one process)."""
        return self.tp > 1 or self.dp_replicate > 1

    def build_mesh(self, device_type: str) -> Any:
        """The ``DeviceMesh`` ``("dp_replicate", "dp_shard", "tp")`` over all ranks."""
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(
            device_type,
            (self.dp_replicate, self.dp_shard, self.tp),
            mesh_dim_names=("dp_replicate", "dp_shard", "tp"),
        )

    @staticmethod
    def dp_mesh(mesh: Any) -> Any:
        """The FSDP2 mesh: ``dp_shard`` (1-D), or ``(dp_replicate, dp_shard)`` for HSDP."""
        if mesh["dp_replicate"].size() > 1:
            return mesh["dp_replicate", "dp_shard"]
        return mesh["dp_shard"]

    def dp_rank(self, mesh: Any) -> int:
        """This rank's index among the data-parallel ranks (0 on one process)."""
        if mesh is None:
            import torch.distributed as dist

            return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return (
            mesh["dp_replicate"].get_local_rank() * self.dp_shard
            + mesh["dp_shard"].get_local_rank()
        )
