"""Custom ``pyro.poutine`` handlers that drive training (see each module's docstring)."""
from inference.handlers.competition import Competition, Winner
from inference.handlers.scale import ScaleSites

__all__ = ["Competition", "ScaleSites", "Winner"]
