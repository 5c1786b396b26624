"""Completion windows: which ``completion_window`` values a batch may ask for, and how long each lasts.

OpenAI accepts only ``"24h"``. A site may offer more (``OPENAI_BATCHES["COMPLETION_WINDOWS"]``,
e.g. ``["1h", "24h", "7d"]``): a fast tier and a cheap background tier, since the scheduler
serves earlier ``expires_at`` first. A window is a positive whole number followed by ``m``
(minutes), ``h`` (hours) or ``d`` (days).

``expires_at = created_at + window``, unless ``COMPLETION_WINDOW_SECONDS`` is set: then every
window lasts that many seconds (a test override, to exercise expiry without waiting a day).
"""

import re

from .conf import app_settings

WINDOW_PATTERN = re.compile(r"([1-9][0-9]*)([mhd])")
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def parse_window(value):
    """Seconds in a window such as ``"24h"``, or None when ``value`` is not one."""
    match = WINDOW_PATTERN.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    return int(match[1]) * UNIT_SECONDS[match[2]]


def allowed_windows():
    return list(app_settings.COMPLETION_WINDOWS)


def window_seconds(window):
    """How long a batch created with ``window`` may run (``expires_at - created_at``)."""
    override = app_settings.COMPLETION_WINDOW_SECONDS
    return override if override is not None else parse_window(window)
