"""Model-side handler: evaluate sample sites at their mode (GNM's generation rule)."""
from __future__ import annotations

from typing import Iterable

from pyro.poutine.messenger import Messenger


class ModeSites(Messenger):
    """Set every (unobserved, not yet valued) sample site in ``sites`` to ``fn.mode`` instead of a draw.

    For GNM's z^s this is ``z_pres = (logits > 0)`` and the means of the Gaussians, as the authors
    generate (docs/gnm.md, "The model"). The site stays a latent site with its distribution, so
    outer handlers (``condition``, ``do``, ``replay``) still override it.
    """

    def __init__(self, sites: Iterable[str]):
        super().__init__()
        self.sites = frozenset(sites)

    def _pyro_sample(self, msg):
        if msg["name"] in self.sites and not msg["is_observed"] and msg["value"] is None:
            msg["value"] = msg["fn"].mode
            msg["done"] = True
