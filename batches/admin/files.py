"""The batches that use a file, on the file's admin page. files_app knows nothing
of batches, so this app puts a subclass of files_app's ``FileAdmin`` with that
column in its place."""

from django.contrib import admin
from django.db.models import Q
from django.utils.html import format_html, format_html_join

from files_app.admin import FileAdmin, admin_change_link
from files_app.models import File

from ..models import Batch


class FileWithBatchesAdmin(FileAdmin):
    fields = (*FileAdmin.fields, "used_by")
    readonly_fields = fields

    @admin.display(description="used by batches")
    def used_by(self, obj):
        batches = Batch.objects.filter(Q(input_file_id=obj.pk) | Q(output_file_id=obj.pk) | Q(error_file_id=obj.pk))
        rows = []
        for batch in batches.only("id", "status", "input_file_id", "output_file_id", "error_file_id"):
            role = {batch.input_file_id: "input", batch.output_file_id: "output", batch.error_file_id: "errors"}[obj.pk]
            rows.append((admin_change_link(batch, site_name=self.admin_site.name), role, batch.status))
        if not rows:
            return "—"
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{} — {} ({})</li>", rows))


# Importing files_app.admin above registered FileAdmin, whatever the order of INSTALLED_APPS.
if admin.site.is_registered(File):
    admin.site.unregister(File)
admin.site.register(File, FileWithBatchesAdmin)
