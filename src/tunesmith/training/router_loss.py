"""Mixture-of-experts router losses for the training recipes.

Two top-level recipe keys set the coefficients: ``router_aux_loss_coef`` (Switch / Mixtral
load balancing, ``modules.moe.router_aux_loss``; transformers' ``router_aux_loss_coef``) and
``router_z_loss_coef`` (ST-MoE z-loss). Both default to 0 (off), as transformers trains
without router losses unless ``output_router_logits`` is set. Each micro-batch's
``coef * loss`` is added to its mean token loss before the backward, pooled over every token
the micro-batch routed (an unpadded batch routes no padding). The router statistics
(``modules.moe.router_stats``) and the router losses go to the metrics at log steps.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from tunesmith.config import ConfigError
from tunesmith.modules.moe import moe_layers, router_aux_loss, router_stats, router_z_loss

__all__ = ["RouterLoss", "ROUTER_LOSS_KEYS", "add_router_loss"]

ROUTER_LOSS_KEYS = frozenset({"router_aux_loss_coef", "router_z_loss_coef"})


class RouterLoss:
    """``coef_aux * aux + coef_z * z`` of the model's last forward, plus its metrics."""

    def __init__(self, aux_coef: float = 0.0, z_coef: float = 0.0):
        self.aux_coef = float(aux_coef)
        self.z_coef = float(z_coef)
        self._aux = self._z = None

    @classmethod
    def from_config(cls, cfg: Any, model: nn.Module) -> RouterLoss | None:
        """The recipe's router loss; None when the model has no MoE layer. A coefficient set
        for a dense model is a config mistake (``ConfigError`` naming the key)."""
        aux = float(cfg.get("router_aux_loss_coef") or 0.0)
        z = float(cfg.get("router_z_loss_coef") or 0.0)
        if next(moe_layers(model), None) is None:
            for key, value in (("router_aux_loss_coef", aux), ("router_z_loss_coef", z)):
                if value:
                    raise ConfigError(
                        f"{key}={value}: the model has no mixture-of-experts layers; remove it"
                    )
            return None
        return cls(aux, z)

    def __call__(self, model: nn.Module) -> Tensor | None:
        """The weighted router loss of the last forward (a scalar), None when both are off."""
        total = None
        if self.aux_coef:
            self._aux = router_aux_loss(model)
            total = self.aux_coef * self._aux
        if self.z_coef:
            self._z = router_z_loss(model)
            z = self.z_coef * self._z
            total = z if total is None else total + z
        return total

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Router statistics of the last forward and the last router losses (host syncs)."""
        out = router_stats(model)
        if self._aux is not None:
            out["router/aux_loss"] = float(self._aux.detach())
        if self._z is not None:
            out["router/z_loss"] = float(self._z.detach())
        return out


def add_router_loss(loss: Tensor, router: RouterLoss | None, model: nn.Module) -> Tensor:
    """``loss`` plus the router loss of ``model``'s last forward (unchanged without one)."""
    if router is None:
        return loss
    extra = router(model)
    return loss if extra is None else loss + extra.to(loss.dtype)
