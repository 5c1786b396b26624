"""The models and their migrations agree."""

import io

from django.core.management import call_command


def test_migrations_are_in_sync(db):
    out = io.StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exc:
        raise AssertionError(f"Model changes without a migration:\n{out.getvalue()}") from exc
