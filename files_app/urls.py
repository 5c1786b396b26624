from rest_framework.routers import SimpleRouter

from .upload_views import UploadViewSet
from .views import FileViewSet

router = SimpleRouter(trailing_slash=False)
router.register("files", FileViewSet, basename="openai-file")
router.register("uploads", UploadViewSet, basename="openai-upload")

urlpatterns = router.urls
