"""Small HTML and text helpers the batches admin pages share."""

import json
from datetime import timedelta
from urllib.parse import urlencode

from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince


def status_badge(status):
    return format_html('<span class="ob-status ob-status-{}">{}</span>', status, status.replace("_", " "))


def format_duration(seconds):
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


def age(moment):
    if timezone.now() - moment < timedelta(minutes=1):
        return "just now"
    return f"{timesince(moment)} ago"


def pretty_json(value):
    if value is None:
        return "—"
    return format_html('<pre class="ob-json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False))


def changelist_url(model, site_name, **params):
    opts = model._meta
    url = reverse(f"{site_name}:{opts.app_label}_{opts.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url
