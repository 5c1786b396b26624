"""OpenAI's cursor lists, as a DRF pagination class (with its schema methods).

A page is ``{"object": "list", "data", "first_id", "last_id", "has_more"}``;
``after`` is the id of the last item of the previous page, ``limit`` the page
size. Items are ordered by (created_at, id) so ties never skip or repeat rows.
"""

from django.db.models import Q
from rest_framework.pagination import BasePagination
from rest_framework.response import Response

from .errors import OpenAIError


class OpenAICursorPagination(BasePagination):
    default_limit = 20
    max_limit = 100
    # The query parameter that picks the order by created_at ("asc" or "desc"), where
    # the client may choose; otherwise the newest come first.
    order_param = None
    # What ``after`` names in the schema: "the id of the last <item> of the previous page".
    item_name = "item"

    def paginate_queryset(self, queryset, request, view=None):
        params = request.query_params
        order = params.get(self.order_param, "desc") if self.order_param else "desc"
        if order not in ("asc", "desc"):
            raise OpenAIError(f"Invalid '{self.order_param}': expected 'asc' or 'desc'.", param=self.order_param, code="invalid_value")
        limit = parse_limit(params.get("limit", self.default_limit), self.max_limit)
        descending = order == "desc"
        queryset = queryset.order_by(*(["-created_at", "-id"] if descending else ["created_at", "id"]))
        after = params.get("after")
        if after:
            cursor = queryset.model.objects.filter(pk__in=queryset.values("pk")).filter(pk=after).first()
            if cursor is None:
                raise OpenAIError(f"Invalid 'after': no object with id '{after}' in this list.", param="after", code="invalid_value")
            op = "lt" if descending else "gt"
            queryset = queryset.filter(
                Q(**{f"created_at__{op}": cursor.created_at}) | Q(created_at=cursor.created_at, **{f"id__{op}": cursor.pk})
            )
        rows = list(queryset[: limit + 1])
        self.has_more = len(rows) > limit
        return rows[:limit]

    def get_paginated_response(self, data):
        return Response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": self.has_more,
            }
        )

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "description": "OpenAI's cursor page.",
            "required": ["object", "data", "first_id", "last_id", "has_more"],
            "properties": {
                "object": {"type": "string", "allOf": [{"enum": ["list"]}]},
                "data": schema,
                "first_id": {"type": "string", "nullable": True},
                "last_id": {"type": "string", "nullable": True},
                "has_more": {"type": "boolean"},
            },
        }

    def get_schema_operation_parameters(self, view):
        parameters = [
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": "Page size.",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_limit, "default": self.default_limit},
            },
        ]
        if self.order_param:
            parameters.append(
                {
                    "name": self.order_param,
                    "in": "query",
                    "required": False,
                    "description": "By created_at (default desc).",
                    "schema": {"type": "string", "enum": ["asc", "desc"]},
                }
            )
        parameters.append(
            {
                "name": "after",
                "in": "query",
                "required": False,
                "description": f"The id of the last {self.item_name} of the previous page.",
                "schema": {"type": "string"},
            }
        )
        return parameters


def parse_limit(raw, max_limit):
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise OpenAIError(f"Invalid 'limit': expected an integer, got '{raw}'.", param="limit", code="invalid_type")
    if not 1 <= limit <= max_limit:
        raise OpenAIError(
            f"Invalid 'limit': integer below minimum value or above maximum value. Expected a value between 1 and "
            f"{max_limit}, but got {limit} instead.",
            param="limit",
            code="integer_out_of_range",
        )
    return limit
