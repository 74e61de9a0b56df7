from django.urls import path

from . import integration_views as views

app_name = "integrations"
urlpatterns = [
    path("", views.integration_list, name="list"),
    path("new/", views.integration_create, name="create"),
    path("<int:pk>/", views.integration_edit, name="edit"),
    path("<int:pk>/enabled/", views.integration_toggle, name="toggle"),
    path("<int:pk>/delete/", views.integration_delete, name="delete"),
    path("<int:pk>/test/", views.integration_test, name="test"),
    path("<int:pk>/test/status/", views.test_status, name="test_status"),
    path("tokens/", views.token_page, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="revoke"),
]
