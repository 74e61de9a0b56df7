from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from health import views as health

from . import views

urlpatterns = [
    path("", health.home, name="home"),  # a status page: is mail going out?
    # Probes and metrics: answered by health.middleware.ProbeMiddleware before the Host check
    # and sign-in; listed here for reverse() and for a stack without that middleware.
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("settings/smtp/", include("smtpsettings.urls")),
    path("outbox/", include("notifications.urls")),
    path("users/", views.users_page, name="users"),
    path(
        "users/invitations/<int:pk>/<str:action>/",
        views.invitation_action,
        name="invitation_action",
    ),
    path("invite/<str:token>/", views.accept_invitation, name="accept_invitation"),
    path("invite/join/<int:pk>/", views.join_invitation, name="join_invitation"),
    path("integrations/", include("notifications.integration_urls")),
    path("events/", include("notifications.event_urls")),
    path("api/v1/", include("notifications.api_urls")),
    path("admin/", admin.site.urls),
]
