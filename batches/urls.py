"""All /v1 routes of both apps: ``path("v1/", include("batches.urls"))``."""

from django.urls import include, path, re_path
from rest_framework.routers import SimpleRouter

from files_app.api import api_not_found

from .views import BatchViewSet
from .webhook_views import WebhookEndpointViewSet

router = SimpleRouter(trailing_slash=False)
router.register("batches", BatchViewSet, basename="openai-batch")
router.register("webhooks", WebhookEndpointViewSet, basename="openai-webhook-endpoint")

urlpatterns = [
    path("", include("files_app.urls")),
    *router.urls,
    re_path(r"^.*$", api_not_found),
]
