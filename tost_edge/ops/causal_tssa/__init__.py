from .chunk import chunk_causal_tssa
from .fused_recurrent import fused_recurrent_causal_tssa, step_causal_tssa
from .naive import naive_causal_tssa
from .packed import naive_causal_tssa_packed
from .state import CausalTSSAState

__all__ = ["CausalTSSAState", "naive_causal_tssa", "naive_causal_tssa_packed", "chunk_causal_tssa",
           "fused_recurrent_causal_tssa", "step_causal_tssa"]
