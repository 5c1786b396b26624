from django.contrib import admin
from django.http import HttpResponseRedirect
from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView

from batches.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="openai-batches-metrics"),
    # The OpenAPI description of the /v1 routes; before the include, whose catch-all answers 404.
    path("v1/openapi.json", SpectacularJSONAPIView.as_view(), name="openapi-schema"),
    path("v1/", include("batches.urls")),
    path("", lambda request: HttpResponseRedirect("/admin/")),
]
