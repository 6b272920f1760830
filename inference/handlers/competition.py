"""Competition of experts, ECON section 5.2, as a ``pyro.poutine`` messenger.

At every guide site that carries competition scores in ``infer["competition_scores"]``
(ECONGuide's ``k_t``: each expert's ``lambda * L_x(k) + L_r(k)`` at this step, shape
``(..., K)``; the guide owns the objective) the messenger picks the winner stochastically with
``P(k) ~ exp(-score / temperature)`` (or greedily by argmin) and replaces the site's
distribution by a point mass at the winner. A point mass has log-density 0 and no
score-function term, so ``k_t`` adds no REINFORCE gradient and the loss contains only the
winner's terms: the greedy maximisation of eq. (13) over k_{1:T} that the paper describes.

The temperature is this project's addition (docs/econ.md, "What we tried"), as is the guide's
per-pixel score: section 5.2 leaves the competition objective to the implementer. With the
literal sums at sigma_x = 0.1 the gaps between experts are hundreds to thousands of nats, the
draw is an argmin in practice, and it goes to the expert with the smallest region.
"""
from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.distributions.score_parts import ScoreParts
from pyro.poutine.messenger import Messenger


class Winner(TorchDistribution):
    """Point mass at integer ``value``: log-density 0, no score-function or entropy term.

    Its draw does not depend on any parameter, so it counts as reparameterised (which lets
    ``TraceMeanField_ELBO`` accept it); its entropy term is an explicit zero.
    """

    arg_constraints = {}
    has_rsample = True

    def __init__(self, value: torch.Tensor, num_experts: int, validate_args=None):
        self.value, self.num_experts = value, num_experts
        super().__init__(value.shape, torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.num_experts - 1)

    def expand(self, batch_shape, _instance=None):
        return Winner(self.value.expand(batch_shape), self.num_experts)

    def sample(self, sample_shape=torch.Size()):
        return self.value.expand(self._extended_shape(sample_shape))

    def rsample(self, sample_shape=torch.Size()):
        return self.sample(sample_shape)

    def log_prob(self, value):
        return torch.zeros(torch.broadcast_shapes(value.shape, self.batch_shape), device=self.value.device)

    def score_parts(self, value, *args, **kwargs):
        zero = self.log_prob(value)
        return ScoreParts(log_prob=zero, score_function=0, entropy_term=zero)


class Competition(Messenger):
    """Pick the winning expert at each ``k_t`` site of a guide (ECON section 5.2).

    :param greedy: take the argmin of the score instead of sampling ``P(k) ~ exp(-score / temperature)``.
    :param temperature: divides the scores before the draw (1: the literal ``exp(-score)``).

    Use it on the guide only::

        loss = elbo.differentiable_loss(model, Competition()(guide), x)
    """

    def __init__(self, greedy: bool = False, temperature: float = 1.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"Competition: temperature must be > 0, got {temperature}")
        self.greedy, self.temperature = bool(greedy), float(temperature)

    def _pyro_sample(self, msg):
        score = msg["infer"].get("competition_scores")
        if score is None or msg["is_observed"] or msg["value"] is not None:
            return
        shape = msg["fn"].batch_shape
        if self.greedy:
            winner = score.argmin(-1).expand(shape)
        else:
            winner = dist.Categorical(logits=-score / self.temperature).expand(shape).sample()
        msg["fn"] = Winner(winner, score.shape[-1])
