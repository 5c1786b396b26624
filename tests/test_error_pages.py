"""The bundled site's error pages (templates/): a browser gets a page of the site for an
unknown page or a server error, never Django's bare or debug page; the /v1 API keeps
OpenAI's JSON errors."""

import pytest
from django.urls import include, path

from project.urls import handler500
from project.urls import urlpatterns as site_urlpatterns

pytestmark = pytest.mark.django_db


def broken(request):
    raise RuntimeError("boom")


# The site's routes plus two that fail outside any DRF view (for the 500 tests).
urlpatterns = [path("broken/", broken), path("v1/broken/", broken), path("", include(site_urlpatterns))]
handler500 = handler500


def test_an_unknown_page_renders_the_site_404(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert "404.html" in [template.name for template in response.templates]
    html = response.content.decode()
    assert "Page not found" in html and "/no/such/page" in html


def test_an_unknown_api_route_stays_openai_json(client):
    response = client.get("/v1/no/such/route")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/no/such/route)"


@pytest.mark.urls("tests.test_error_pages")
def test_a_server_error_renders_the_site_500(client):
    client.raise_request_exception = False
    response = client.get("/broken/")
    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
    assert "Something went wrong" in response.content.decode()


@pytest.mark.urls("tests.test_error_pages")
def test_a_server_error_under_v1_is_openai_json(client):
    client.raise_request_exception = False
    response = client.get("/v1/broken/")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": None, "code": None}
    }
