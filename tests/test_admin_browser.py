"""The operator console in a real browser: headless Chromium (Debian's package)
driven by Playwright, against the admin served by pytest-django's live server.

Needs ``pip install -e '.[browser]'`` and ``apt-get install chromium``; skipped
(with the reason shown) otherwise. Screenshots go to ``$ADMIN_SCREENSHOTS_DIR``
(``ADMIN_SCREENSHOTS_DIR=docs`` refreshes the ones in the docs), else to the
test's temporary directory.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.urls import reverse

from batches.models import Batch, BatchStatus
from tests.conftest import chat_line

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "operator-password"

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[browser]')")

pytestmark = [
    pytest.mark.live,
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"No Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(autouse=True)
def plain_static_files(settings):
    # The live server serves the admin's static files from the apps (no collectstatic).
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


@pytest.fixture
def screenshots_dir(tmp_path):
    directory = Path(os.environ.get("ADMIN_SCREENSHOTS_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def open_page(live_server, monkeypatch, *, width, height, sidebar_open):
    # Playwright's sync API keeps an event loop on this thread; the ORM calls the
    # test makes meanwhile are ordinary blocking calls, not async-context misuse.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True, base_url=live_server.url)
        context.add_init_script(f"localStorage.setItem('django.admin.navSidebarIsOpen', '{str(sidebar_open).lower()}')")
        context.set_default_timeout(15_000)
        yield context.new_page()
        context.close()
        browser.close()


@pytest.fixture
def page(live_server, monkeypatch):
    # The app navigation sidebar starts collapsed: the screenshots are about the batches.
    yield from open_page(live_server, monkeypatch, width=1600, height=900, sidebar_open=False)


@pytest.fixture
def laptop_page(live_server, monkeypatch):
    """A 1366x768 window with the admin's navigation sidebar open."""
    yield from open_page(live_server, monkeypatch, width=1366, height=768, sidebar_open=True)


@pytest.fixture
def run_through_django_q(make_batch, upstream):
    """``run_through_django_q(lines, steps, **fields)``: a batch whose tasks ran in-process
    through django-q2 (``sync=True``), so its task pages have entries."""
    from django_q.tasks import async_task

    def make(lines, steps=("validate_batch", "dispatch", "finalize_batch"), **fields):
        batch = make_batch(lines, **fields)
        for task in steps:
            args = () if task == "dispatch" else (batch.id,)  # the dispatcher serves every batch
            async_task(f"batches.tasks.{task}", *args, group=batch.id, task_name=f"{task}:{batch.id}", sync=True)
        batch.refresh_from_db()
        return batch

    return make


@pytest.fixture
def console_data(transactional_db, run_through_django_q, make_user, upstream):
    """Batches in most states, as operators meet them."""
    alice, bob = make_user("alice"), make_user("bob")
    questions = ["What is a batch?", "How do I cancel?", "Where is my output?", "Why did line 7 fail?"]
    report = run_through_django_q(
        [chat_line(f"faq-{n:02d}", content=questions[n % 4]) for n in range(10)]
        + [chat_line(f"faq-{n:02d}", content="FAIL_400 please") for n in range(10, 12)],
        owner=alice,
        metadata={"project": "support-faq", "schedule": "nightly"},
    )
    embeddings = run_through_django_q(
        [
            {"custom_id": f"doc-{n}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-embed", "input": f"doc {n}"}}
            for n in range(8)
        ],
        owner=bob,
        endpoint="/v1/embeddings",
        metadata={"project": "search-index"},
    )
    broken = run_through_django_q(
        [chat_line("ok-1"), "{not json", {"custom_id": "ok-1", "method": "POST", "url": "/v1/chat/completions", "body": {}}],
        steps=("validate_batch",),
        owner=bob,
    )
    upstream.configure(down=True)
    unreachable = run_through_django_q([chat_line("probe-1")], steps=("validate_batch",), owner=alice, metadata={"project": "evals"})
    upstream.configure(down=False)
    needle = run_through_django_q(
        [chat_line(f"ticket-{4700 + n}", content=f"Summarise ticket {4700 + n}") for n in range(25)],
        steps=("validate_batch",),
        owner=alice,
        metadata={"project": "ticket-triage"},
    )
    fresh = run_through_django_q([chat_line("late-1")], steps=(), owner=bob)
    assert report.status == BatchStatus.COMPLETED and report.failed_requests == 2
    assert embeddings.status == BatchStatus.COMPLETED
    assert broken.status == unreachable.status == BatchStatus.FAILED
    assert needle.status == BatchStatus.IN_PROGRESS and fresh.status == BatchStatus.VALIDATING
    get_user_model().objects.create_superuser("operator", "ops@example.com", PASSWORD)
    return {"report": report, "needle": needle}


def test_operator_finds_cancels_retries_and_downloads(page, console_data, screenshots_dir):
    report, needle = console_data["report"], console_data["needle"]

    page.goto("/admin/login/?next=/admin/batches/batch/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list tbody tr").count() == 6
    if not os.environ.get("BATCHES_REDIS_URL"):
        # ORM broker: tasks just ran through django-q2, which is evidence of a worker.
        # (With Redis only a cluster's heartbeat counts, and none runs in this test.)
        assert page.locator(".ob-worker-banner").count() == 0

    # Find the batch that holds a request by its custom_id, and open it.
    page.fill("#searchbar", "ticket-4711")
    page.press("#searchbar", "Enter")
    page.wait_for_load_state()
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1 and needle.id in rows.first.inner_text()
    rows.first.locator("th a").click()
    page.wait_for_selector("text=Timeline")
    assert "ticket-triage" in page.content()

    # Cancel it from its page: the confirmation page comes first.
    page.click("button.ob-action-cancel_batches")
    page.wait_for_selector("text=Cancel these batches?")
    page.click("input[type=submit][value='Yes, cancel them']")
    page.wait_for_selector(".messagelist")
    assert f"Cancelling 1 batch: {needle.id}" in page.inner_text(".messagelist")
    needle.refresh_from_db()
    assert needle.status == BatchStatus.CANCELLING

    # Retry the failed lines of another one from the changelist.
    page.goto("/admin/batches/batch/")
    page.locator("#result_list tbody tr", has_text=report.id).locator("input.action-select").check()
    page.select_option("select[name=action]", "retry_failed_requests")
    page.click("button[name=index]")
    page.wait_for_selector("text=Retry the failed, cancelled and expired requests of these batches?")
    assert "2 failed, cancelled or expired of 12" in page.content()
    page.click("input[type=submit][value='Yes, retry them']")
    page.wait_for_selector(".messagelist")
    retry = Batch.objects.get(retry_of=report)
    assert retry.id in page.inner_text(".messagelist")
    assert page.locator("#result_list tbody tr", has_text=needle.id).locator(".ob-status-cancelling").count() == 1
    page.screenshot(path=screenshots_dir / "admin-changelist.png", full_page=True)
    retry_input = retry.input_file.content.open("rb").read().decode().splitlines()
    assert [json.loads(line)["custom_id"] for line in retry_input] == ["faq-10", "faq-11"]

    # The original's page links to the retry and downloads its output file.
    page.goto(reverse("admin:batches_batch_change", args=[quote(report.pk)]))
    page.wait_for_selector("text=Retried as")
    assert page.locator(f"a:has-text('{retry.id}')").count() >= 1
    page.screenshot(path=screenshots_dir / "admin-batch-detail.png", full_page=True)
    with page.expect_download() as download_info:
        page.locator(".field-output_file_link a[download]").click()
    download = download_info.value
    assert download.suggested_filename == f"{report.id}_output.jsonl"
    lines = Path(download.path()).read_text().splitlines()
    assert len(lines) == 10 and {json.loads(line)["response"]["status_code"] for line in lines} == {200}


def log_in(page, next_url):
    page.goto(f"/admin/login/?next={next_url}")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")


# The columns an operator scans in the batch list.
SCANNED_COLUMNS = ("batch", "owner", "status_badge", "progress", "counts")


def test_changelist_columns_fit_a_laptop_window_with_the_sidebar_open(laptop_page, console_data, screenshots_dir):
    log_in(laptop_page, "/admin/batches/batch/")
    laptop_page.wait_for_selector("#result_list")
    assert laptop_page.locator("#nav-sidebar").is_visible()
    layout = laptop_page.evaluate(
        """(columns) => {
            const results = document.querySelector('#changelist .results');
            const visibleRight = Math.min(window.innerWidth, results.getBoundingClientRect().left + results.clientWidth);
            return {
                pageOverflow: document.documentElement.scrollWidth - window.innerWidth,
                visibleRight: visibleRight,
                columns: Object.fromEntries(
                    columns.map(c => [c, document.querySelector('#result_list th.column-' + c).getBoundingClientRect().right])
                ),
            };
        }""",
        list(SCANNED_COLUMNS),
    )
    laptop_page.screenshot(path=screenshots_dir / "admin-changelist-1366.png")
    # The page never scrolls sideways; the detail columns after them may, inside the list.
    assert layout["pageOverflow"] <= 0, layout
    for column, right in layout["columns"].items():
        assert right <= layout["visibleRight"], f"{column} ends at {right}px, past {layout['visibleRight']}px"


def test_dashboard_renders_its_charts(page, console_data, screenshots_dir):
    log_in(page, "/admin/")
    page.wait_for_selector("#content-main")
    page.click("a[href='/admin/batches/dashboard/']")
    page.wait_for_selector(".ob-dashboard")
    assert page.title().startswith("Batch operations dashboard")
    # The workers finished 20 requests in the fixture (12 + 8), all in the last hour.
    finished = int(page.inner_text("#ob-hour-total"))
    assert finished == int(page.inner_text("#ob-day-total")) == 20
    assert int(page.inner_text("#ob-pending")) == 25  # the ticket-triage batch, validated, never run
    charts = page.locator("svg.ob-chart")
    assert charts.count() == 3
    for n in range(3):
        box = charts.nth(n).bounding_box()
        assert box["width"] > 300 and box["height"] > 40
    # The bars are there: the current minute's bar has both colours' rectangles and a tooltip.
    assert page.locator("#ob-throughput-hour svg rect").count() == 120
    assert page.locator("#ob-owners svg title", has_text="alice:").count() == 1
    assert page.locator("#ob-upstreams tbody tr").count() == 1
    page.screenshot(path=screenshots_dir / "admin-dashboard.png", full_page=True)
