from .naive import naive_tssa
from .packed import naive_tssa_packed

__all__ = ["naive_tssa", "naive_tssa_packed"]
