"""The admin dashboard: figures, server-drawn charts, permissions (the browser test renders it in Chromium)."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from batches import dashboard, tasks
from batches.models import ThroughputMinute
from tests.conftest import chat_line, run_batches

URL = "/admin/batches/dashboard/"


@pytest.fixture(autouse=True)
def plain_static_files(settings):
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


def text_of(html, element_id):
    return re.search(rf'id="{element_id}">([^<]*)<', html).group(1).strip()


def test_linked_from_the_admin_index(admin_client, db):
    assert f'href="{URL}"' in admin_client.get("/admin/").content.decode()


def test_dashboard_figures(admin_client, make_batch, make_user, upstream):
    owner = make_user("team-a")
    done = make_batch([chat_line("a"), chat_line("b", "FAIL_400"), chat_line("c")], owner=owner)
    tasks.validate_batch(done.id)
    run_batches()
    waiting = make_batch([chat_line("w1"), chat_line("w2")], owner=make_user("team-b"))
    tasks.validate_batch(waiting.id)

    response = admin_client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert text_of(html, "ob-pending") == "2"
    assert text_of(html, "ob-active") == "1"
    assert text_of(html, "ob-hour-total") == "3" and text_of(html, "ob-day-total") == "3"
    assert html.count('<svg class="ob-chart"') == 3  # hour, day, owners
    assert "2 succeeded, 1 failed" in html  # the tooltip of the current minute's bar
    assert f"<code>{upstream.base_url.rstrip('/')}</code>" in html
    assert "team-a:" in html and "team-b" not in html.split('id="ob-owners"')[1]  # team-b used no tokens yet
    assert "cdn" not in html.lower() and '<script src="http' not in html


def test_throughput_buckets(db):
    now = timezone.now().replace(second=30)
    minute = now.replace(second=0, microsecond=0)
    ThroughputMinute.objects.create(minute=minute, succeeded_requests=5, failed_requests=1)
    ThroughputMinute.objects.create(minute=minute - timedelta(minutes=59), succeeded_requests=2)
    ThroughputMinute.objects.create(minute=minute - timedelta(minutes=60), succeeded_requests=100)  # outside the hour
    hour = dashboard.throughput(now, minutes=60, step=1)
    assert len(hour) == 60
    assert hour[-1][1:] == (5, 1) and hour[0][1:] == (2, 0)
    assert sum(s for _, s, _ in hour) == 7
    day = dashboard.throughput(now, minutes=24 * 60, step=60)
    assert len(day) == 24 and sum(s for _, s, _ in day) == 107


def test_quantile_interpolates_like_prometheus():
    # 10 calls up to 0.05 s, 10 more up to 0.1 s.
    points = [("0.05", 10), ("0.1", 20)] + [(str(b), 20) for b in dashboard.LATENCY_BUCKETS[2:]]
    assert dashboard.quantile(0.5, points) == pytest.approx(0.05)
    assert dashboard.quantile(0.75, points) == pytest.approx(0.075)
    assert dashboard.quantile(0.5, [(label, 0) for label, _ in points]) is None


def test_needs_the_view_batch_permission(client, make_user, db):
    staff = make_user("staff", is_staff=True)
    client.force_login(staff)
    assert client.get(URL).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_batch"))
    assert client.get(URL).status_code == 200


def test_charts_escape_owner_names(db):
    svg = dashboard.owner_bars([("<script>x</script>", 10, 5)])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
