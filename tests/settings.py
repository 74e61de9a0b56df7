"""Settings for the test run: the product's own settings with a fixed key and a fast hasher."""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789")
os.environ.setdefault("GATEWAYMGR_DATA_DIR", tempfile.mkdtemp(prefix="gatewaymgr-test-"))

from gatewaymgr.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A real file, not memory: the at-rest tests read it, and WAL only exists on a file.
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(DATA_DIR, "test.sqlite3")}  # noqa: F405
os.makedirs(STATIC_ROOT, exist_ok=True)  # noqa: F405  (collectstatic is not part of a test run)
