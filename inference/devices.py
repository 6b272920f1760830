"""The ``--device`` option of the tools: one parser, one clear error."""
from __future__ import annotations

import re

import click
import torch

DEVICE_HELP = "cpu, cuda or cuda:N (a CUDA device must be available)."
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``; anything else, or a CUDA device this
    machine lacks, is a :class:`click.BadParameter` that says what is allowed."""
    found = _DEVICE.match(str(name).strip())
    if found is None or (found.group(1) == "cpu" and found.group(2) is not None):
        raise click.BadParameter(f"{name!r} is not a device this library runs on; use {DEVICE_HELP}",
                                 param_hint="'--device'")
    if found.group(1) == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{name}: CUDA is not available here (torch {torch.__version__}); use cpu",
                                     param_hint="'--device'")
        index = int(found.group(2) or 0)
        if index >= torch.cuda.device_count():
            raise click.BadParameter(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                                     param_hint="'--device'")
    return torch.device(name)


def device_option(ctx, param, value) -> str:
    """click callback of a ``--device`` option: the name checked by :func:`parse_device` (``cuda:1``)."""
    return str(parse_device(value))
