"""GNM's fixed-mask curriculum (Jiang & Ahn 2020, supplement section 3: Arrow, first 500 steps).

While active, the renderer uses a constant alpha map (0.9 everywhere: the foreground explains 90%
of every pixel, the background 10%) and clamps z_pres to at most 0.99 inside the renderer.
"""
from __future__ import annotations

import dataclasses

from pyro.poutine.messenger import Messenger

from pyro_scenes.gnm.render import RENDER_EFFECT


class FixedMaskCurriculum(Messenger):
    """Override GNM's compositing for ``begin <= step < end``; a no-op outside that window.

    It answers the model's ``render_options`` effect (message type ``"gnm_render"``), so it
    changes nothing but the renderer; apply it to the model.

    :param alpha: the constant alpha map. :param pres_max: upper clamp on z_pres in rendering.
    """

    def __init__(self, step: int = 0, begin: int = 0, end: int = 500, alpha: float = 0.9, pres_max: float = 0.99):
        super().__init__()
        self.step, self.begin, self.end = int(step), int(begin), int(end)
        self.alpha, self.pres_max = float(alpha), float(pres_max)

    @property
    def active(self) -> bool:
        return self.begin <= self.step < self.end

    def _process_message(self, msg):
        if msg["type"] == RENDER_EFFECT and self.active:
            (options,) = msg["args"]
            msg["args"] = (dataclasses.replace(options, alpha=self.alpha, pres_max=self.pres_max),)
