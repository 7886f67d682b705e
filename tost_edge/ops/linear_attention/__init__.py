from .chunk import chunk_causal_linear_attention
from .fused_recurrent import fused_recurrent_causal_linear_attention, step_linear_attention
from .naive import naive_causal_linear_attention, naive_linear_attention
from .packed import naive_causal_linear_attention_packed
from .state import LinearAttentionState, feature_map

__all__ = ["LinearAttentionState", "feature_map", "naive_linear_attention", "naive_causal_linear_attention",
           "naive_causal_linear_attention_packed", "chunk_causal_linear_attention",
           "fused_recurrent_causal_linear_attention", "step_linear_attention"]
