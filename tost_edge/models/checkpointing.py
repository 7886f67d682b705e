"""Activation checkpointing of a model's blocks: a block's activations are not kept for the backward pass but
computed again there from its input, so a training step holds one block's activations at a time instead of every
block's (for a few percent more compute: each block runs its forward twice).

    model = models.create("tost_lm_base").set_backend("triton").set_checkpointing(True)

It applies while gradients are recorded (training); inference, exports and the recurrent API run as before.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def _exporting() -> bool:
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


class Checkpointed:
    """Mixed into a model whose blocks run through `_block`."""
    checkpointing = False

    def set_checkpointing(self, enabled: bool = True):
        """Recompute each block's activations in the backward pass instead of keeping them (see the module); also
        in the models inside this one (a video model's frame encoder)."""
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled: expected True or False, got {enabled!r}")
        for m in self.modules():
            if isinstance(m, Checkpointed):
                m.checkpointing = enabled
        return self

    def _block(self, block, *args):
        # non-reentrant: takes any outputs (a block's state dict too), restores the RNG for dropout's masks, and
        # composes with torch.compile (which keeps it); an exported or traced graph never checkpoints
        if self.checkpointing and torch.is_grad_enabled() and not _exporting():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)
