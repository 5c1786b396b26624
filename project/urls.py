from django.contrib import admin
from django.http import HttpResponseRedirect
from django.urls import include, path
from django.views import defaults
from drf_spectacular.views import SpectacularJSONAPIView

from batches.metrics import metrics_view
from files_app.api.errors import api_server_error

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="openai-batches-metrics"),
    # The OpenAPI description of the /v1 routes; before the include, whose catch-all answers 404.
    path("v1/openapi.json", SpectacularJSONAPIView.as_view(), name="openapi-schema"),
    path("v1/", include("batches.urls")),
    path("", lambda request: HttpResponseRedirect("/admin/")),
]


def server_error(request):
    """Errors no view handled: OpenAI's JSON under /v1/, templates/500.html elsewhere
    (unknown pages get templates/404.html from Django's own handler)."""
    if request.path.startswith("/v1/"):
        return api_server_error(request)
    return defaults.server_error(request)


handler500 = server_error
