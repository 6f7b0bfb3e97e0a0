"""Model stage: the PanGu-pi decoder cells, parameter counts, weights I/O and generation.

The cells load on first use (PEP 562), so that MindSpore-free parts (the memory plan, which the
launcher's pre-flight check runs in a second) do not pay for importing MindSpore."""

__all__ = ["PanGuPiForCausalLM", "PanGuPiModel", "PanGuPiWithLoss"]


def __getattr__(name: str):
    if name in __all__:
        from pangu_pro.model import pangu_pi

        return getattr(pangu_pi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
