"""One service as the running activator holds it: settings, admission and counters together."""

from __future__ import annotations

from dataclasses import dataclass, field

from activator.config import ServiceSettings
from activator.metrics import ServiceStats
from activator.throttler import Throttler


@dataclass(eq=False)
class Service:
    settings: ServiceSettings
    throttler: Throttler
    stats: ServiceStats = field(default_factory=ServiceStats)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Service:
        return cls(settings, Throttler(settings))

    def update(self, settings: ServiceSettings) -> None:
        """New settings from a changed catalog entry; counters and held requests carry on."""
        self.settings = settings
        self.throttler.update_settings(settings)
