"""Custom ``pyro.poutine`` handlers that drive training (see each module's docstring)."""
from inference.handlers.scale import ScaleSites

__all__ = ["ScaleSites"]
