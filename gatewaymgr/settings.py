"""Gateway Manager settings, read from the environment (and an optional `.env` file).

Nothing is required: without configuration the console runs on SQLite under `var/`, with a
secret key generated on first run and kept in `var/secret_key`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from gatewaymgr.instance import read_or_create_secret_key
from gatewaymgr.public_url import public_url

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env")

DATA_DIR = Path(env.str("GATEWAYMGR_DATA_DIR", default=str(BASE_DIR / "var")))
SECRET_KEY = env.str("SECRET_KEY", default="") or read_or_create_secret_key(DATA_DIR / "secret_key")
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
SMTP_ENCRYPTION_KEYS = env.list("SMTP_ENCRYPTION_KEYS", default=[])
DEBUG = env.bool("DEBUG", default=False)

# Without PUBLIC_URL, links in e-mails follow BIND (scripts/run's address); when BIND listens
# on every address there is no name to derive, and start-up (ensure_admin) prints this warning.
PUBLIC_URL, PUBLIC_URL_WARNING = public_url(
    env.str("PUBLIC_URL", default=""), env.str("BIND", default="")
)
_public = urlsplit(PUBLIC_URL)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
if _public.hostname and _public.hostname not in ALLOWED_HOSTS:
    ALLOWED_HOSTS.append(_public.hostname)
CSRF_TRUSTED_ORIGINS = [f"{_public.scheme}://{_public.netloc}"]
if _public.scheme == "https":
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    # Browsers that reached the console over https keep to https for a year. The header is sent
    # whether or not a TLS-terminating proxy tells Django the scheme (gatewaymgr.security);
    # browsers ignore it on plain http. No includeSubDomains: other hosts may share the domain.
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
# Pages load scripts, styles, frames and images from this origin only, and no inline script or
# style runs; the SMTP page's test result is a same-origin frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'"
)
# Reverse proxies in front of gunicorn that append the client's address to X-Forwarded-For;
# 0 when gunicorn faces the clients (scripts/run). Sign-in throttling counts per that address.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

INSTALLED_APPS = [
    "gatewaymgr",
    "smtpsettings",
    "notifications",
    "health",  # workers' heartbeats, the banner, the probes and /metrics
    "retention",  # the record of the workers' daily retention run
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks",
    "django_tasks_db",
    "axes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "gatewaymgr.security.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: turns a lockout into its page
]

ROOT_URLCONF = "gatewaymgr.urls"
WSGI_APPLICATION = "gatewaymgr.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while the task worker writes; IMMEDIATE plus a busy
    # timeout makes concurrent writers wait their turn instead of failing with "locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
# Requests keep their database connection (issue 14, API throughput): opening one per request
# cost a third of an API request's CPU (on SQLite Django registers its functions and runs the
# PRAGMAs each time; PostgreSQL starts a server process). Checked before reuse, so a restarted
# database costs one failed check, not an error. DATABASE_CONN_MAX_AGE=0: one per request.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Every e-mail is stored in the outbox and delivered by a task worker with the SMTP settings
# kept on Settings -> SMTP (smtpsettings.backends.StoredSettingsBackend sends directly).
EMAIL_BACKEND = "notifications.backends.OutboxBackend"
DEFAULT_FROM_EMAIL = "gateway-manager@localhost"  # replaced by the stored sender when sending
OUTBOX_RETRY_HOURS = env.float("OUTBOX_RETRY_HOURS", default=24)
OUTBOX_RETRY_FIRST_DELAY = env.float("OUTBOX_RETRY_FIRST_DELAY", default=30)
# A live worker renews its claims every third of this, even during a slow send (worker.py):
# it bounds how long a dead worker's messages wait, not how long a send may take.
OUTBOX_LEASE_SECONDS = env.int("OUTBOX_LEASE_SECONDS", default=45)
OUTBOX_BATCH_SIZE = env.int("OUTBOX_BATCH_SIZE", default=100)
# A delivery is committed alone as its attempt, at once; the messages' rows are marked Sent
# together: after this many deliveries, with the first delivery this many seconds after the
# oldest, and at each batch's end (notifications.delivery.commit_sent). Until then: Sending.
OUTBOX_SETTLE_EVERY = env.int("OUTBOX_SETTLE_EVERY", default=64)
OUTBOX_SETTLE_SECONDS = env.float("OUTBOX_SETTLE_SECONDS", default=1.0)
OUTBOX_RETENTION_DAYS = env.int("OUTBOX_RETENTION_DAYS", default=30)
# Each worker looks for due mail and expired leases at least this often, whatever the task
# queue holds (notifications/worker.py); finished task records are kept this long.
OUTBOX_SWEEP_SECONDS = env.float("OUTBOX_SWEEP_SECONDS", default=20)
OUTBOX_TASK_RETENTION_HOURS = env.float("OUTBOX_TASK_RETENTION_HOURS", default=24)


# Retention (notifications/retention.py): how many days each kind of record is kept; 0 or empty
# keeps it for good. The workers apply it once a day (RETENTION_DAILY); `manage.py
# apply_retention` by hand. Task records follow OUTBOX_TASK_RETENTION_HOURS; the settings history
# is an audit log, kept for good.
def _retention_days(name: str, default: int) -> int:
    value = env.str(name, default=str(default)).strip()
    if not value:
        return 0
    if not value.isdigit():
        raise ImproperlyConfigured(
            f"{name} must be a whole number of days (0 or empty keeps for good), not {value!r}."
        )
    return int(value)


RETENTION_SENT_DAYS = _retention_days("RETENTION_SENT_DAYS", OUTBOX_RETENTION_DAYS)
RETENTION_FAILED_DAYS = _retention_days("RETENTION_FAILED_DAYS", 90)  # failed and cancelled
RETENTION_EVENTS_DAYS = _retention_days("RETENTION_EVENTS_DAYS", 90)  # with their dispatches
RETENTION_TEST_RUNS_DAYS = _retention_days("RETENTION_TEST_RUNS_DAYS", 30)
RETENTION_INVITATIONS_DAYS = _retention_days("RETENTION_INVITATIONS_DAYS", 90)  # expired, revoked
RETENTION_BATCH_SIZE = env.int("RETENTION_BATCH_SIZE", default=2000)  # rows per transaction
RETENTION_DAILY = env.bool("RETENTION_DAILY", default=True)
API_RATE_LIMIT = env.str("API_RATE_LIMIT", default="120/minute")  # per token; see ratelimit.py
# Where Microsoft 365 tokens come from (smtpsettings/oauth.py); tests point it at a local one.
OAUTH_MICROSOFT_AUTHORITY = env.str(
    "OAUTH_MICROSOFT_AUTHORITY", default="https://login.microsoftonline.com"
)

# Delivery health (health/): each worker's heartbeat, the console's banner and status page,
# GET /healthz, /readyz and /metrics (README, "Delivery health"). A worker not seen for
# HEALTH_WORKER_TIMEOUT_SECONDS is gone; mail due longer than HEALTH_QUEUE_DELAY_SECONDS, or
# the last HEALTH_FAILED_ATTEMPTS attempts failing, put a banner on every page too.
HEALTH_HEARTBEAT_SECONDS = env.float("HEALTH_HEARTBEAT_SECONDS", default=5)
HEALTH_WORKER_TIMEOUT_SECONDS = env.float(
    "HEALTH_WORKER_TIMEOUT_SECONDS", default=3 * HEALTH_HEARTBEAT_SECONDS
)
HEALTH_QUEUE_DELAY_SECONDS = env.float("HEALTH_QUEUE_DELAY_SECONDS", default=300)
HEALTH_FAILED_ATTEMPTS = env.int("HEALTH_FAILED_ATTEMPTS", default=5)
HEALTH_CACHE_SECONDS = env.float("HEALTH_CACHE_SECONDS", default=5)  # the banner, per process
# /metrics: with a token, only "Authorization: Bearer <token>"; without one, loopback clients.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# The probes and /metrics answer before the Host check and sign-in (a load balancer or
# Kubernetes asks by the pod's address), and the banner is on every console page.
MIDDLEWARE.insert(0, "health.middleware.ProbeMiddleware")
TEMPLATES[0]["OPTIONS"]["context_processors"] += [
    "gatewaymgr.context_processors.navigation",
    "health.context_processors.delivery_health",
]

# Tasks: the database backend and its worker (manage.py db_worker) by default; past one
# machine, TASKS_BACKEND=rq with REDIS_URL and RQ workers (manage.py rqworker) anywhere.
TASKS_BACKEND = env.str("TASKS_BACKEND", default="db")
if TASKS_BACKEND == "db":
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
elif TASKS_BACKEND == "rq":
    INSTALLED_APPS.append("django_rq")
    RQ_QUEUES = {"default": {"URL": env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")}}
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend"}}
else:
    raise ImproperlyConfigured(f"TASKS_BACKEND must be db or rq, not {TASKS_BACKEND!r}.")

# One cache for every process and machine, in the database (manage.py createcachetable).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "gatewaymgr_cache",
    }
}

# Sign-in throttling (django-axes, gatewaymgr/signin.py). Failed sign-ins are counted in the
# database over AXES_COOLOFF_TIME; each rule locks what it names once it reaches its limit, until
# AXES_COOLOFF_TIME after its last counted failure. Meanwhile even the right password is refused.
# `manage.py axes_reset` lifts every lock (axes_reset_username / axes_reset_ip for one).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses a locked-out sign-in before the password
    "django.contrib.auth.backends.ModelBackend",
]
SIGN_IN_LOCKOUT_RULES = [
    (["username", "ip_address"], 5),  # one user name from one address
    (["ip_address"], 20),  # one address trying any user names
    (["username"], 50),  # one user name from many addresses
]
AXES_LOCKOUT_PARAMETERS = [parameters for parameters, _ in SIGN_IN_LOCKOUT_RULES]
AXES_FAILURE_LIMIT = SIGN_IN_LOCKOUT_RULES[0][1]  # the scale gatewaymgr.signin maps rules onto
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_HANDLER = "gatewaymgr.signin.LockoutHandler"
AXES_LOCKOUT_CALLABLE = "gatewaymgr.signin.lockout_response"
AXES_CLIENT_IP_CALLABLE = "gatewaymgr.signin.request_address"
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False  # a lock ends when the page says it does
AXES_DISABLE_ACCESS_LOG = True  # no row per successful sign-in, which nothing would purge
AXES_VERBOSE = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Invitation tokens in a logged path (e.g. Django's "Gone: /invite/…/") are redacted.
    "filters": {"redact_tokens": {"()": "gatewaymgr.logredaction.RedactTokens"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "filters": ["redact_tokens"]},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # django-axes logs each failed sign-in at INFO; its warnings (repeats, lockouts) stay.
    "loggers": {"axes": {"level": "WARNING"}},
}
