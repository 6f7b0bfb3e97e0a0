"""Model stage: the PanGu-pi decoder cells, parameter counts, weights I/O and generation."""
from pangu_pro.model.pangu_pi import PanGuPiForCausalLM, PanGuPiModel, PanGuPiWithLoss

__all__ = ["PanGuPiForCausalLM", "PanGuPiModel", "PanGuPiWithLoss"]
