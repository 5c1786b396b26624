from rest_framework.routers import SimpleRouter

from .views import FileViewSet

router = SimpleRouter(trailing_slash=False)
router.register("files", FileViewSet, basename="openai-file")

urlpatterns = router.urls
