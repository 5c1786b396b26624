"""Streaming upload handling: the size cap is enforced while bytes arrive."""

from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler

from .conf import app_settings


class UploadTooLarge(Exception):
    pass


class CappedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Spools to a temporary file and aborts as soon as the cap is passed,
    so an oversized upload never fills memory or disk."""

    def __init__(self, request=None, max_bytes=None):
        super().__init__(request)
        self.max_bytes = app_settings.MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
        self.received = 0
        self.too_large = False

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # Reject up front when the client announces a body bigger than the cap.
        if content_length and content_length > self.max_bytes + 64 * 1024:
            self.too_large = True
            raise StopUpload(connection_reset=True)

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.max_bytes:
            self.too_large = True
            raise StopUpload(connection_reset=True)
        return super().receive_data_chunk(raw_data, start)
