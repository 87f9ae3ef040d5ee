"""The exception every layer raises for a refused argument or setting, so front ends can name it in their
own words (``num_inference_steps`` is ``--steps`` on the command line)."""
from __future__ import annotations

from typing import Any


class SettingError(ValueError):
    """An argument or setting whose value is not accepted. ``name``: the argument (the library's name for
    it); ``value``: what was given; ``accepted``: what would be (a phrase such as ``"an integer >= 1"``)."""

    def __init__(self, name: str, value: Any, accepted: str):
        self.name, self.value, self.accepted = name, value, accepted
        super().__init__(f"{name}: must be {accepted}, got {value!r}")
