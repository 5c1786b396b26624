from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from files_app.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for USERNAME (creating the user if needed). The key is printed once, as the last line."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key.")

    def handle(self, username, name, **options):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save()
            self.stdout.write(f"Created user {username!r}.")
        _, raw = ApiKey.objects.issue(user, name=name)
        self.stdout.write("API key (shown once; store it now):")
        self.stdout.write(raw)
