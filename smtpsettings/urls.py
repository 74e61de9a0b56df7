from django.urls import path

from . import views

app_name = "smtpsettings"
urlpatterns = [
    path("", views.smtp_settings_page, name="page"),
    path("trust/", views.trust_certificate, name="trust"),
    path("test/<int:pk>/", views.test_run_result, name="test_run"),
]
