"""The parallel layout of a run: data-parallel replicate x shard (FSDP2 / HSDP) x context
parallel x tensor parallel.

torchtune's keys: ``tensor_parallel_dim`` (default 1), ``data_parallel_shard_dim`` (default
-1: whatever the world size leaves), ``data_parallel_replicate_dim`` (default 1; > 1 is HSDP:
FSDP2 shards within each replica group and all-reduces across them), and
``context_parallel_dim`` (default 1; > 1 splits every sequence over that many ranks, see
``training.context_parallel``). Their product is the world size. One ``DeviceMesh`` with named
dims ``("dp_replicate", "dp_shard", "cp", "tp")`` (row-major, so the tensor-parallel ranks of a
group are neighbours, as on one node); with ``cp > 1`` the dims ``dp_shard`` and ``cp`` are
also flattened into ``dp_shard_cp``, the dim FSDP2 shards over (as torchtitan does): the cp
ranks hold different tokens, so their gradients are summed like the data-parallel ranks'.

Ranks of one tensor- or context-parallel group read the same batch: the sampler is split over
the data-parallel ranks only (:attr:`ParallelDims.dp_size`, :meth:`ParallelDims.dp_rank`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.config import ConfigError

__all__ = ["ParallelDims"]

_KEYS = (
    "tensor_parallel_dim",
    "data_parallel_shard_dim",
    "data_parallel_replicate_dim",
    "context_parallel_dim",
)


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of each parallel dimension; ``dp_replicate * dp_shard * cp * tp == world_size``."""

    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int
    cp: int = 1

    @classmethod
    def from_config(cls, cfg: Any, world_size: int) -> ParallelDims:
        """Read the four keys of ``cfg`` (a mapping) and check them against ``world_size``;
        a :class:`ConfigError` naming the key otherwise (before anything is built)."""
        values = {}
        for key, default in zip(_KEYS, (1, -1, 1, 1)):
            raw = cfg.get(key)
            value = default if raw is None else raw
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key}={raw!r} is not an integer", key=key)
            if value < 1 and not (key == "data_parallel_shard_dim" and value == -1):
                allowed = "an integer >= 1, or -1 to infer" if "shard" in key else ">= 1"
                raise ConfigError(f"{key}={value}: give {allowed}", key=key)
            values[key] = value
        tp, shard, rep, cp = (values[k] for k in _KEYS)
        if shard == -1:
            if world_size % (tp * rep * cp):
                named = [f"{k}={values[k]}" for k in _KEYS if k != _KEYS[1] and values[k] > 1]
                raise ConfigError(
                    f"{' x '.join(named) or 'the mesh'} does not divide the world size "
                    f"{world_size} (processes): pick degrees whose product divides it, or "
                    "change --nproc_per_node / --nnodes",
                    key=next((k for k in _KEYS if k != _KEYS[1] and values[k] > 1), _KEYS[0]),
                )
            shard = world_size // (tp * rep * cp)
        if rep * shard * cp * tp != world_size:
            total = rep * shard * cp * tp
            raise ConfigError(
                f"the mesh data_parallel_replicate_dim={rep} x data_parallel_shard_dim={shard} x "
                f"context_parallel_dim={cp} x tensor_parallel_dim={tp} = {total} processes does "
                f"not match the world size {world_size}: set data_parallel_shard_dim=-1 or "
                f"launch {total} processes",
                key="data_parallel_shard_dim",
            )
        return cls(dp_replicate=rep, dp_shard=shard, tp=tp, world_size=world_size, cp=cp)

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks (replicas x shards): what the batch is split over."""
        return self.dp_replicate * self.dp_shard

    @property
    def needs_mesh(self) -> bool:
        """True unless this is plain FSDP2 over every rank (or one process)."""
        return self.tp > 1 or self.dp_replicate > 1 or self.cp > 1

    def build_mesh(self, device_type: str) -> Any:
        """The ``DeviceMesh`` ``("dp_replicate", "dp_shard", "cp", "tp")`` over all ranks, with
        ``dp_shard_cp`` (``dp_shard`` and ``cp`` flattened) when ``cp > 1``."""
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(
            device_type,
            (self.dp_replicate, self.dp_shard, self.cp, self.tp),
            mesh_dim_names=("dp_replicate", "dp_shard", "cp", "tp"),
        )
        if self.cp > 1:
            mesh["dp_shard", "cp"]._flatten("dp_shard_cp")
        return mesh

    @staticmethod
    def dp_mesh(mesh: Any) -> Any:
        """The FSDP2 mesh: ``dp_shard`` (1-D), or ``(dp_replicate, dp_shard)`` for HSDP; with
        context parallelism ``dp_shard_cp`` in place of ``dp_shard``."""
        shard = "dp_shard_cp" if mesh["cp"].size() > 1 else "dp_shard"
        if mesh["dp_replicate"].size() > 1:
            return mesh["dp_replicate", shard]
        return mesh[shard]

    def dp_rank(self, mesh: Any) -> int:
        """This rank's index among the data-parallel ranks (0 on one process)."""
        if mesh is None:
            import torch.distributed as dist

            return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return (
            mesh["dp_replicate"].get_local_rank() * self.dp_shard
            + mesh["dp_shard"].get_local_rank()
        )
