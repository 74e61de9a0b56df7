from django.urls import path

from . import api

app_name = "api"
urlpatterns = [
    path("events", api.events_endpoint, name="events"),
]
