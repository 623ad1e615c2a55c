"""PyTorch custom ops tmoe::fused_moe and tmoe::moe_layer.

Ops with fake (meta) implementations, so torch.compile traces through them
without a graph break and CUDA graphs capture them. They return a new tensor
(custom ops may not return an input); call tmoe.fused_moe(..., out=...) to
write into a given buffer. Inside CUDA-graph capture with given ids, pass
trust_routing_values=True.
"""
from typing import Optional

import torch

from . import _api

if not hasattr(torch.library, "custom_op"):
    raise ImportError(f"tmoe.torch_ops needs torch >= 2.4 (torch.library.custom_op), found {torch.__version__}")


def _like(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("tmoe::fused_moe", mutates_args=())
def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, shared_w13: Optional[torch.Tensor] = None,
              shared_w2: Optional[torch.Tensor] = None, trust_routing_values: bool = False,
              backend: str = "auto") -> torch.Tensor:
    return _api.fused_moe(x, w13, w2, topk_weights, topk_ids, shared_w13=shared_w13, shared_w2=shared_w2,
                          trust_routing_values=trust_routing_values, backend=backend)


@fused_moe.register_fake
def _fused_moe_fake(x, w13, w2, topk_weights, topk_ids, shared_w13=None, shared_w2=None,
                    trust_routing_values=False, backend="auto"):
    return _like(x)


@torch.library.custom_op("tmoe::moe_layer", mutates_args=())
def moe_layer(x: torch.Tensor, router_logits: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, top_k: int,
              routing: str = "softmax_topk", renormalize: bool = False, n_group: int = 1, topk_group: int = 1,
              routed_scaling_factor: float = 1.0, correction_bias: Optional[torch.Tensor] = None,
              shared_w13: Optional[torch.Tensor] = None, shared_w2: Optional[torch.Tensor] = None,
              backend: str = "auto") -> torch.Tensor:
    return _api.moe_layer(x, router_logits, w13, w2, top_k=top_k, routing=routing, renormalize=renormalize,
                          n_group=n_group, topk_group=topk_group, routed_scaling_factor=routed_scaling_factor,
                          correction_bias=correction_bias, shared_w13=shared_w13, shared_w2=shared_w2,
                          backend=backend)


@moe_layer.register_fake
def _moe_layer_fake(x, router_logits, w13, w2, top_k, routing="softmax_topk", renormalize=False, n_group=1,
                    topk_group=1, routed_scaling_factor=1.0, correction_bias=None, shared_w13=None,
                    shared_w2=None, backend="auto"):
    return _like(x)
