"""Admin for webhook endpoints and the delivery log."""

from django import forms
from django.contrib import admin, messages
from django.utils.text import Truncator

from files_app.admin import ReadOnlyAdmin

from .. import webhooks
from ..models import WebhookDelivery, WebhookEndpoint, WebhookEventType


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2048, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=WebhookEventType.choices, widget=forms.CheckboxSelectMultiple, initial=WebhookEventType.values
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["owner", "url", "event_types", "enabled"]

    def clean_url(self):
        url = self.cleaned_data["url"]
        try:
            webhooks.check_url(url)
        except webhooks.UnsafeURL as exc:
            raise forms.ValidationError(str(exc)) from None
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("id", "owner", "url", "event_types", "enabled", "created_at")
    list_filter = ("enabled",)
    search_fields = ("id", "url", "owner__username")
    readonly_fields = ("id", "created_at")
    raw_id_fields = ("owner",)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            # The only time the secret is shown; it is never displayed again.
            self.message_user(
                request, f"Signing secret of {obj.id} (copy it now, it will not be shown again): {obj.secret}", messages.WARNING
            )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    """The delivery log: one row per attempt, read-only, with a resend action."""

    list_display = (
        "id",
        "event_id",
        "event_type",
        "batch_id",
        "endpoint",
        "attempt",
        "status",
        "status_code",
        "latency_ms",
        "attempted_at",
        "next_attempt_at",
        "short_error",
    )
    list_filter = ("status", "event_type")
    search_fields = ("event_id", "batch_id", "endpoint__id", "endpoint__url")
    list_select_related = ("endpoint",)
    date_hierarchy = "created_at"
    actions = ["resend"]

    def has_resend_permission(self, request):
        return request.user.has_perm("batches.change_webhookdelivery")

    @admin.display(description="error")
    def short_error(self, obj):
        return Truncator(obj.error).chars(80)

    @admin.action(description="Resend the event of the selected deliveries", permissions=["resend"])
    def resend(self, request, queryset):
        queued = skipped = 0
        seen = set()
        for delivery in queryset.order_by("-created_at"):
            key = (delivery.endpoint_id, delivery.event_id)
            if key in seen:
                continue
            seen.add(key)
            if webhooks.resend(delivery):
                queued += 1
            else:
                skipped += 1
        self.message_user(request, f"Queued {queued} event(s) again; {skipped} already had an attempt pending.", messages.SUCCESS)
