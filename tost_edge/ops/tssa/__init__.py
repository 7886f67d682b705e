from .naive import naive_tssa

__all__ = ["naive_tssa"]
