from django.contrib import admin
from django.http import HttpResponseRedirect
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", include("batches.urls")),
    path("", lambda request: HttpResponseRedirect("/admin/")),
]
