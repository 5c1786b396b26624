"""The base of every /v1 viewset: the API's policies set on the view, so the host
site's REST_FRAMEWORK settings are left alone."""

from rest_framework import exceptions, viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from .authentication import ApiKeyAuthentication
from .errors import OpenAIError, exception_handler, not_found
from .negotiation import IgnoreAcceptNegotiation
from .pagination import OpenAICursorPagination
from .parsers import OpenAIJSONParser
from .throttling import ApiKeyRateThrottle


class OpenAIViewSet(viewsets.GenericViewSet):
    """Objects are the viewset's queryset (the request user's own) looked up by id;
    they render themselves with ``to_openai()``."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [IsAuthenticated]
    throttle_classes = [ApiKeyRateThrottle]
    parser_classes = [OpenAIJSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = IgnoreAcceptNegotiation
    pagination_class = OpenAICursorPagination
    filter_backends = []
    # Ids are opaque strings (file-..., batch_...): anything but a slash.
    lookup_value_regex = "[^/]+"
    # The object's name in OpenAI's 404 message: "No such <object_name> object: <id>".
    object_name = None
    # No OPTIONS: DRF's metadata for it needs serializers these views do not have.
    http_method_names = [method for method in viewsets.GenericViewSet.http_method_names if method != "options"]

    def get_exception_handler(self):
        return exception_handler

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # Ids and filters go straight into queries; PostgreSQL rejects NUL characters
        # with a database error, so they are a client error here, on every database.
        for name, values in [*((k, [v]) for k, v in kwargs.items()), *request.query_params.lists()]:
            if "\x00" in name or any("\x00" in str(value) for value in values):
                param = name.replace("\x00", "")
                raise OpenAIError(f"Invalid '{param}': contains a NUL character.", param=param, code="invalid_value")
            # Every query parameter of the API takes one value: ?limit=1&limit=5 would
            # otherwise be answered for the last one while the schema says "an integer".
            if len(values) > 1:
                raise OpenAIError(f"Invalid '{name}': expected a single value, got {len(values)}.", param=name, code="invalid_value")

    def permission_denied(self, request, message=None, code=None):
        # Unauthenticated requests are 401 (DRF would pick 403 in some cases).
        if request.authenticators and not request.successful_authenticator:
            raise exceptions.NotAuthenticated()
        super().permission_denied(request, message=message, code=code)

    def get_object(self):
        object_id = self.kwargs[self.lookup_url_kwarg or self.lookup_field]
        obj = self.get_queryset().filter(pk=object_id).first()
        if obj is None:
            raise not_found(self.object_name, object_id)
        self.check_object_permissions(self.request, obj)
        return obj


class ListMixin:
    """``GET /<objects>``: OpenAI's cursor list of the viewset's (filtered) queryset."""

    def list(self, request):
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response([obj.to_openai() for obj in page])


class RetrieveMixin:
    """``GET /<objects>/<id>``."""

    def retrieve(self, request, pk=None):
        return Response(self.get_object().to_openai())
