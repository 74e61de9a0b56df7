from django.urls import path

from . import views

app_name = "notifications"
urlpatterns = [
    path("", views.outbox_page, name="outbox"),
    path("<int:pk>/", views.outbox_detail, name="detail"),
    path("<int:pk>/<str:action>/", views.outbox_action, name="action"),
]
