"""Custom ``pyro.poutine`` handlers that drive training (see each module's docstring)."""
from inference.handlers.aux_kl import AuxiliaryKL, AuxTerm
from inference.handlers.competition import Competition, Winner
from inference.handlers.curriculum import FixedMaskCurriculum
from inference.handlers.prior import BernoulliPrior
from inference.handlers.scale import ScaleSites
from inference.handlers.temperature import RelaxationTemperature

__all__ = ["AuxTerm", "AuxiliaryKL", "BernoulliPrior", "Competition", "FixedMaskCurriculum", "RelaxationTemperature", "ScaleSites", "Winner"]
