from django.contrib.admin.utils import quote
from django.urls import reverse
from tests.test_admin_browser import *  # noqa
from tests.test_admin_browser import PASSWORD

def test_extra_pages(page, console_data, screenshots_dir):
    report = console_data["report"]
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", "operator"); page.fill("#id_password", PASSWORD); page.click("input[type=submit]")
    row = report.requests.get(custom_id="faq-10")
    page.goto(reverse("admin:batches_batchrequest_change", args=[row.pk]))
    page.screenshot(path=screenshots_dir / "x-request.png", full_page=True)
    page.goto(reverse("admin:batches_batchrequest_changelist") + f"?batch={report.id}")
    page.screenshot(path=screenshots_dir / "x-requests.png", full_page=True)
    page.goto("/admin/batches/batch/")
    page.locator("#action-toggle").check()
    page.select_option("select[name=action]", "cancel_batches")
    page.click("button[name=index]")
    page.screenshot(path=screenshots_dir / "x-confirm.png", full_page=True)
    page.goto(reverse("admin:files_app_apikey_add"))
    page.fill("#id_user", str(report.owner_id)); page.fill("#id_name", "nightly job")
    page.click("input[name=_save]")
    page.screenshot(path=screenshots_dir / "x-key.png", full_page=True)
    page.goto(reverse("admin:files_app_file_change", args=[quote(report.input_file_id)]))
    page.screenshot(path=screenshots_dir / "x-file.png", full_page=True)
    broken = Batch.objects.filter(status="failed").exclude(errors__0__code="upstream_unavailable").first()
    page.goto(reverse("admin:batches_batch_change", args=[quote(broken.id)]))
    page.screenshot(path=screenshots_dir / "x-failed.png", full_page=True)
