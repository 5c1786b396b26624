import hashlib
import logging
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from .ids import make_id

logger = logging.getLogger("openai_batches.files")

KEY_PREFIX = "sk-batch-"


def hash_key(raw_key: str) -> str:
    # Keys are 256-bit random, so a fast unsalted hash is enough to make a leaked
    # database useless while keeping lookups a single indexed query.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)

    def issue(self, user, name="", **quotas):
        """Create a key and return ``(api_key, raw_secret)``; the secret is not stored."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        api_key = self.create(user=user, name=name, prefix=raw[: len(KEY_PREFIX) + 6], key_hash=hash_key(raw), **quotas)
        return api_key, raw


class ApiKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="openai_api_keys")
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=32, editable=False, help_text="First characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Quotas (batches/quotas.py); empty = the site-wide default in OPENAI_BATCHES["DEFAULT_QUOTAS"].
    max_active_batches = models.PositiveIntegerField(
        null=True, blank=True, help_text="Unfinished batches this key may have at once. Empty: the site default."
    )
    max_batch_creations_per_hour = models.PositiveIntegerField(
        null=True, blank=True, help_text="Batches this key may create in any 60 minutes. Empty: the site default."
    )
    max_enqueued_requests = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests across this key's unfinished batches. Empty: the site default."
    )
    max_enqueued_prompt_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Prompt tokens (estimated) across this key's unfinished batches. Empty: the site default."
    )
    weight = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Share of the upstream its owner's batches get against other owners' (2 = twice a weight-1 owner's).",
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.prefix}… ({self.user})"

    @property
    def is_active(self):
        return self.revoked_at is None

    def revoke(self):
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class FilePurpose(models.TextChoices):
    BATCH = "batch"
    BATCH_OUTPUT = "batch_output"
    ASSISTANTS = "assistants"
    FINE_TUNE = "fine-tune"
    VISION = "vision"
    USER_DATA = "user_data"
    EVALS = "evals"


# Purposes a client may upload; batch_output files are only written by workers.
UPLOADABLE_PURPOSES = [p for p in FilePurpose.values if p != FilePurpose.BATCH_OUTPUT]


def new_file_id():
    return make_id("file-")


def file_upload_to(instance, filename):
    # Stored under the id, never under the client's filename (no traversal, no clashes).
    return f"openai_files/{instance.id}.jsonl" if instance.purpose in ("batch", "batch_output") else f"openai_files/{instance.id}"


def file_storage():
    from django.core.files.storage import storages

    from .conf import app_settings

    return storages[app_settings.STORAGE_ALIAS]


def uploaded_file_expiry(purpose, created_at, expires_after=None):
    """When a client's file expires: ``expires_after`` seconds if given, else (OpenAI's
    default) DEFAULT_INPUT_FILE_TTL for batch input; None = kept until deleted."""
    from .conf import app_settings

    seconds = expires_after
    if seconds is None and purpose == FilePurpose.BATCH:
        seconds = app_settings.DEFAULT_INPUT_FILE_TTL
    return created_at + timedelta(seconds=seconds) if seconds is not None else None


class FileQuerySet(models.QuerySet):
    def live(self, now=None):
        """Files that have not expired (expired ones are gone for the API)."""
        now = now or timezone.now()
        return self.filter(models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now))

    def owned_by(self, user):
        return self.filter(owner=user)


class StoredContent(models.Model):
    """A row with stored bytes in its ``content`` field: deleting the row deletes them."""

    class Meta:
        abstract = True

    def delete(self, *args, **kwargs):
        # A storage error must not resurrect the row: it is logged, and the bytes left behind.
        name = self.content.name
        result = super().delete(*args, **kwargs)
        if name:
            try:
                self.content.storage.delete(name)
            except OSError:
                model = self._meta.model_name
                logger.warning("%s.content_delete_failed %s_id=%s", model, model, self.pk, exc_info=True)
        return result


class File(StoredContent):
    id = models.CharField(primary_key=True, max_length=64, default=new_file_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="openai_files")
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=32, choices=FilePurpose.choices)
    bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    content = models.FileField(upload_to=file_upload_to, storage=file_storage, max_length=255)

    objects = FileQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "purpose", "created_at"])]

    def __str__(self):
        return f"{self.id} ({self.filename})"

    def to_openai(self):
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at.timestamp()),
            "expires_at": int(self.expires_at.timestamp()) if self.expires_at else None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


# --- Uploads: a large file sent in parts (/v1/uploads) ------------------------------------

# OpenAI's rules: an Upload accepts parts for an hour; one part is at most 64 MB.
UPLOAD_LIFETIME = timedelta(hours=1)
MAX_PART_BYTES = 64 * 1024 * 1024


class UploadStatus(models.TextChoices):
    PENDING = "pending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


def new_upload_id():
    return make_id("upload_")


def new_part_id():
    return make_id("part_")


def part_upload_to(instance, filename):
    return f"openai_upload_parts/{instance.upload_id}/{instance.id}"


class UploadQuerySet(models.QuerySet):
    def owned_by(self, user):
        return self.filter(owner=user)

    def lapsed(self, now=None):
        """Pending uploads past their hour: they take no more parts and cannot complete."""
        return self.filter(status=UploadStatus.PENDING, expires_at__lte=now or timezone.now())

    def expire_lapsed(self, now=None):
        """Mark lapsed uploads expired and delete their parts (``tasks.sweep``); returns how many."""
        expired = 0
        for upload in self.lapsed(now):
            if Upload.objects.filter(pk=upload.pk, status=UploadStatus.PENDING).update(status=UploadStatus.EXPIRED):
                upload.discard_parts()
                logger.info("upload.expired upload_id=%s", upload.id)
                expired += 1
        # A part stored while its upload was being completed or cancelled (a race the
        # views cannot close without a long lock) would otherwise stay forever.
        for part in UploadPart.objects.exclude(upload__status=UploadStatus.PENDING):
            part.delete()
        return expired


class Upload(models.Model):
    """A file being sent in parts; completing it makes a ``File`` of the parts in order."""

    id = models.CharField(primary_key=True, max_length=64, default=new_upload_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="openai_uploads")
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=32, choices=FilePurpose.choices)
    bytes = models.BigIntegerField(help_text="The size the client announced; the parts must add up to it.")
    mime_type = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=UploadStatus.choices, default=UploadStatus.PENDING)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    expires_at = models.DateTimeField()
    file_expires_after = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds; the created file's expires_after.")
    # Like a batch's files: no database constraint, the client may delete the file.
    file = models.ForeignKey(File, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+")

    objects = UploadQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self):
        return f"{self.id} ({self.filename})"

    def current_status(self, now=None):
        if self.status == UploadStatus.PENDING and self.expires_at <= (now or timezone.now()):
            return UploadStatus.EXPIRED
        return self.status

    def to_openai(self):
        file = File.objects.filter(pk=self.file_id).first() if self.file_id else None
        return {
            "id": self.id,
            "object": "upload",
            "bytes": self.bytes,
            "created_at": int(self.created_at.timestamp()),
            "expires_at": int(self.expires_at.timestamp()),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.current_status(),
            "file": file.to_openai() if file else None,
        }

    def discard_parts(self):
        """Delete the parts and their stored bytes (after complete, cancel or expiry)."""
        for part in self.parts.all():
            part.delete()


class UploadPart(StoredContent):
    id = models.CharField(primary_key=True, max_length=64, default=new_part_id, editable=False)
    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="parts")
    bytes = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    content = models.FileField(upload_to=part_upload_to, storage=file_storage, max_length=255)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return self.id

    def to_openai(self):
        return {"id": self.id, "object": "upload.part", "created_at": int(self.created_at.timestamp()), "upload_id": self.upload_id}
