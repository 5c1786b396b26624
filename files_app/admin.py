"""Admin for files and API keys.

Files are read-only here (clients upload through the API, workers write
results); staff can inspect and download them. API keys are issued here: the
secret is shown once on the page that answers the add form and never stored.
"""

import logging

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_ngettext, quote, unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst

from .models import ApiKey, File, Upload, UploadPart

logger = logging.getLogger("openai_batches.admin")


def admin_change_link(obj, text=None, site_name="admin"):
    """A link to ``obj``'s admin page, or its text when that model has none."""
    opts = obj._meta
    try:
        url = reverse(f"{site_name}:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)])
    except NoReverseMatch:
        return str(text or obj)
    return format_html('<a href="{}">{}</a>', url, text or obj)


def confirmation_page(modeladmin, request, *, question, button, eligible, refused, consequence=""):
    """An intermediate page like Django's delete confirmation, for any action.

    ``eligible`` and ``refused`` are lists of ``(obj, text)``; only the eligible
    objects are posted back, with ``post=yes``, to the action the changelist posted.
    """
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": capfirst(question.rstrip("?")),
        "question": question,
        "consequence": consequence,
        "button": button,
        "action": request.POST["action"],
        "eligible": [(admin_change_link(obj, site_name=modeladmin.admin_site.name), text) for obj, text in eligible],
        "eligible_pks": [obj.pk for obj, _ in eligible],
        "refused": [(admin_change_link(obj, site_name=modeladmin.admin_site.name), text) for obj, text in refused],
        "opts": opts,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "objects_name": model_ngettext(opts, len(eligible)),
    }
    return TemplateResponse(request, "admin/files_app/confirm_action.html", context)


def confirm_then_act(modeladmin, request, eligible, refused, *, act, refused_verb, **page):
    """The flow of an action with a confirmation page (``confirmation_page``, ``page`` its
    texts): first the page, or only the refusals when no object is eligible; once
    confirmed, ``act(objects)`` does the work and returns the ``(obj, reason)`` it could
    not do, reported with the refusals."""
    if request.POST.get("post") == "yes":
        missed = act([obj for obj, _ in eligible])
        report_refused(modeladmin, request, refused_verb, refused + missed)
        return None
    if not eligible:
        report_refused(modeladmin, request, refused_verb, refused)
        return None
    return confirmation_page(modeladmin, request, eligible=eligible, refused=refused, **page)


def report_refused(modeladmin, request, verb, refused):
    """One warning listing the objects an action skipped, and why."""
    if refused:
        items = format_html_join(", ", "{} ({})", ((obj.pk, reason) for obj, reason in refused))
        modeladmin.message_user(request, format_html("Not {}: {}.", verb, items), messages.WARNING)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the apps themselves: visible to staff, never edited here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(File)
class FileAdmin(ReadOnlyAdmin):
    list_display = ("id", "filename", "purpose", "owner", "size", "created_at", "expires_at", "download")
    list_filter = ("purpose", ("created_at", admin.DateFieldListFilter), ("owner", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("owner",)
    search_fields = ("=id", "filename", f"owner__{get_user_model().USERNAME_FIELD}")
    search_help_text = "File id (exact), filename or owner."
    fields = ("id", "filename", "purpose", "owner", "size", "created_at", "expires_at", "stored_as", "download")
    readonly_fields = fields

    def get_urls(self):
        opts = self.model._meta
        download = path(
            "<path:object_id>/download/",
            self.admin_site.admin_view(self.download_view),
            name=f"{opts.app_label}_{opts.model_name}_download",
        )
        return [download, *super().get_urls()]

    def download_view(self, request, object_id):
        """Streams the content from storage in chunks, like the API's /content."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"No file {object_id}.")
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        try:
            handle = obj.content.open("rb")
        except OSError:
            raise Http404(f"The content of file {obj.id} is no longer available.")
        logger.info("file.admin_download file_id=%s staff=%s", obj.id, request.user.pk)
        return FileResponse(handle, as_attachment=True, filename=obj.filename, content_type="application/octet-stream")

    def delete_queryset(self, request, queryset):
        # File.delete() removes the stored content too; a bulk DELETE would not.
        for obj in queryset:
            obj.delete()

    @admin.display(description="size", ordering="bytes")
    def size(self, obj):
        return format_html('<span title="{} bytes">{}</span>', obj.bytes, filesizeformat(obj.bytes))

    @admin.display(description="stored as")
    def stored_as(self, obj):
        return obj.content.name

    @admin.display(description="download")
    def download(self, obj):
        return format_html('<a href="{}" download>Download</a>', file_download_url(obj.pk, self.admin_site.name))


def file_download_url(file_id, site_name="admin"):
    return reverse(f"{site_name}:files_app_file_download", args=[quote(file_id)])


class KeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("masked_key", "name", "user", "weight", "created_at", "last_used_at", "is_active")
    list_filter = (KeyStateFilter, ("created_at", admin.DateFieldListFilter))
    list_select_related = ("user",)
    search_fields = ("name", "prefix", f"user__{get_user_model().USERNAME_FIELD}")
    raw_id_fields = ("user",)
    actions = ["revoke_keys"]
    quota_fields = ("max_active_batches", "max_batch_creations_per_hour", "max_enqueued_requests", "max_enqueued_prompt_tokens")
    add_fields = ("user", "name", *quota_fields)
    change_fields = ("masked_key", "user", "name", "created_at", "last_used_at", "revoked_at")

    def get_fieldsets(self, request, obj=None):
        fields = self.add_fields[:2] if obj is None else self.change_fields
        quotas = (
            "Quotas",
            {
                "fields": self.quota_fields,
                "description": 'Empty: the site default (OPENAI_BATCHES["DEFAULT_QUOTAS"]), unlimited unless set.',
            },
        )
        share = (
            "Share of the upstream",
            {
                "fields": ("weight",),
                "description": "When several owners' batches wait for the same upstream, each owner gets places in "
                "proportion to its weight (its keys' largest). Takes effect on the next claim.",
            },
        )
        # A new key starts at weight 1; it is changed on the key's own page.
        return [(None, {"fields": fields}), quotas] + ([share] if obj is not None else [])

    def get_readonly_fields(self, request, obj=None):
        # key_hash is never shown; a key's identity and history are not editable.
        return () if obj is None else ("masked_key", "user", "created_at", "last_used_at", "revoked_at")

    @admin.display(description="key", ordering="prefix")
    def masked_key(self, obj):
        return f"{obj.prefix}…"

    @admin.display(description="active", boolean=True)
    def is_active(self, obj):
        return obj.is_active

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        quotas = {field: getattr(obj, field) for field in self.quota_fields}
        issued, secret = ApiKey.objects.issue(obj.user, name=obj.name, **quotas)
        # The admin goes on with the form's instance (log entry, redirect): make it the issued row.
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = issued.pk, issued.prefix, issued.key_hash, issued.created_at
        obj._state.adding, obj._state.db = False, issued._state.db
        request._issued_api_key_secret = secret
        logger.info("api_key.issued key_id=%s user=%s staff=%s", issued.pk, issued.user_id, request.user.pk)

    def response_add(self, request, obj, post_url_continue=None):
        """Show the secret on this one response; it is not stored anywhere."""
        secret = getattr(request, "_issued_api_key_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "opts": opts,
            "api_key": obj,
            "secret": secret,
            "change_url": reverse(f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)]),
        }
        response = TemplateResponse(request, "admin/files_app/apikey/issued.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        eligible = [(key, f"{key.user}, created {key.created_at:%Y-%m-%d}") for key in queryset.select_related("user") if key.is_active]
        refused = [(key, "already revoked") for key in queryset if not key.is_active]

        def revoke(keys):
            for key in keys:
                key.revoke()
                logger.info("api_key.revoked key_id=%s staff=%s", key.pk, request.user.pk)
            self.message_user(request, f"Revoked {len(keys)} API key{'s' if len(keys) != 1 else ''}.", messages.SUCCESS)
            return []

        return confirm_then_act(
            self,
            request,
            eligible,
            refused,
            act=revoke,
            refused_verb="revoked",
            question="Revoke these API keys?",
            consequence="Clients using them get 401 from their next request on. This cannot be undone.",
            button="Yes, revoke",
        )


class UploadPartInline(admin.TabularInline):
    model = UploadPart
    fields = ("id", "size", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="size", ordering="bytes")
    def size(self, obj):
        return filesizeformat(obj.bytes)


@admin.register(Upload)
class UploadAdmin(ReadOnlyAdmin):
    """Files being sent in parts (/v1/uploads): what arrived, and the File they became."""

    list_display = ("id", "filename", "purpose", "owner", "size", "status_now", "created_at", "expires_at", "file_link")
    list_filter = ("status", "purpose", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("owner",)
    search_fields = ("=id", "filename", f"owner__{get_user_model().USERNAME_FIELD}")
    search_help_text = "Upload id (exact), filename or owner."
    fields = ("id", "filename", "purpose", "mime_type", "owner", "size", "status_now", "created_at", "expires_at", "file_link")
    readonly_fields = fields
    inlines = [UploadPartInline]

    def has_delete_permission(self, request, obj=None):
        return False  # parts are deleted by complete, cancel and the sweeper, with their bytes

    @admin.display(description="size", ordering="bytes")
    def size(self, obj):
        return format_html('<span title="{} bytes">{}</span>', obj.bytes, filesizeformat(obj.bytes))

    @admin.display(description="status", ordering="status")
    def status_now(self, obj):
        return obj.current_status()

    @admin.display(description="file")
    def file_link(self, obj):
        if not obj.file_id:
            return "—"
        url = reverse(f"{self.admin_site.name}:files_app_file_change", args=[quote(obj.file_id)])
        return format_html('<a href="{}">{}</a>', url, obj.file_id)
