"""OpenAI's cursor pagination of lists: ``after`` (an id), ``limit``, ``has_more``."""

from django.db.models import Q
from rest_framework.response import Response

from .errors import OpenAIError


def paginate(queryset, *, order="desc", after=None, limit=20, max_limit=100, to_openai):
    """OpenAI cursor pagination: ``after`` is the id of the last item of the previous page.

    Items are ordered by (created_at, id) so ties never skip or repeat rows.
    """
    limit = parse_limit(limit, max_limit)
    descending = order != "asc"
    ordering = ["-created_at", "-id"] if descending else ["created_at", "id"]
    queryset = queryset.order_by(*ordering)
    if after:
        cursor = queryset.model.objects.filter(pk__in=queryset.values("pk")).filter(pk=after).first()
        if cursor is None:
            raise OpenAIError(f"Invalid 'after': no object with id '{after}' in this list.", param="after", code="invalid_value")
        op = "lt" if descending else "gt"
        queryset = queryset.filter(
            Q(**{f"created_at__{op}": cursor.created_at}) | Q(created_at=cursor.created_at, **{f"id__{op}": cursor.pk})
        )
    rows = list(queryset[: limit + 1])
    has_more = len(rows) > limit
    data = [to_openai(row) for row in rows[:limit]]
    return Response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


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
