"""Architecture rule sets, by the value of `general.architecture`: which tensors to quantize."""

from __future__ import annotations

from . import dia, kokoro, orpheus, parler
from .base import ArchRules, OptIns, Verdict

RULES: dict[str, ArchRules] = {
    rules.name: rules for rules in (parler.RULES, dia.RULES, kokoro.RULES, orpheus.RULES)
}

__all__ = ["RULES", "ArchRules", "OptIns", "Verdict"]
