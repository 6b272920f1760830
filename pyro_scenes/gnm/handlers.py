"""Model-side handler: evaluate sample sites at their mode (GNM's generation rule)."""
from __future__ import annotations

from typing import Iterable, Optional

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


class ModeSites(Messenger):
    """Set every (unobserved, not yet valued) sample site in ``sites`` (default: every latent site,
    plates aside) to ``fn.mode`` instead of a draw.

    For GNM's z^s this is ``z_pres = (logits > 0)`` and the means of the Gaussians, as the authors
    generate (docs/gnm.md, "The model"). The site stays a latent site with its distribution, so
    outer handlers (``condition``, ``do``, ``replay``) still override it.
    """

    def __init__(self, sites: Optional[Iterable[str]] = None):
        super().__init__()
        self.sites = None if sites is None else frozenset(sites)

    def _pyro_sample(self, msg):
        chosen = not site_is_subsample(msg) if self.sites is None else msg["name"] in self.sites
        if chosen and not msg["is_observed"] and msg["value"] is None:
            msg["value"] = msg["fn"].mode
            msg["done"] = True
