"""The per-runner circuit breaker."""

import logging
import time

from ..conf import app_settings

logger = logging.getLogger("openai_batches.runner")


class CircuitBreaker:
    """Pauses the whole batch while the upstream looks down, instead of burning
    every line's attempts at full speed. Failures seen while it trips don't cost
    the request an attempt."""

    def __init__(self):
        self.consecutive_failures = 0
        self.open_until = 0.0
        self.trips = 0
        self.probe_in_flight = False

    @property
    def is_open(self):
        return time.monotonic() < self.open_until

    @property
    def half_open(self):
        """Cooled down after a trip: one probe request decides whether to close."""
        return bool(self.trips) and self.consecutive_failures >= app_settings.CIRCUIT_BREAKER_THRESHOLD and not self.is_open

    def allowance(self, wanted):
        """How many of ``wanted`` requests may be sent now."""
        if self.is_open:
            return 0
        if self.half_open:
            return 0 if self.probe_in_flight else min(1, wanted)
        return wanted

    def sent(self, count):
        if count and self.half_open:
            self.probe_in_flight = True

    def record(self, outcome):
        """Return True when this failure should not count as an attempt."""
        transient = outcome.kind == "retry" and (outcome.connection_error or (outcome.status_code or 0) >= 500)
        if not transient:
            if self.trips:
                logger.info("runner.breaker_closed after_trips=%d", self.trips)
            self.consecutive_failures, self.trips, self.probe_in_flight = 0, 0, False
            return False
        self.consecutive_failures += 1
        self.probe_in_flight = False
        if self.consecutive_failures >= app_settings.CIRCUIT_BREAKER_THRESHOLD:
            if not self.is_open:
                cooldown = min(app_settings.RETRY_BACKOFF_MAX, app_settings.RETRY_BACKOFF_BASE * 2**self.trips)
                self.trips += 1
                self.open_until = time.monotonic() + cooldown
                logger.warning("runner.breaker_open cooldown_s=%.1f trips=%d", cooldown, self.trips)
            return True
        return False
