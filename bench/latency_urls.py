"""A bench-only view that sends one invitation-sized e-mail, or invites for real."""

from django.core.mail import EmailMultiAlternatives, get_connection
from django.http import HttpRequest, HttpResponse
from django.urls import include, path

from gatewaymgr import invitations
from gatewaymgr.addresses import Invitee

BACKENDS = {
    "outbox": "notifications.backends.OutboxBackend",
    "stock": "django.core.mail.backends.smtp.EmailBackend",
}
TEXT = ("You have been invited to join Gateway Manager. Follow the link to set a password.\n" * 12)[
    :1000
]


def invite(request: HttpRequest) -> HttpResponse:
    backend = request.GET.get("backend", "outbox")
    if backend == "product":  # the real thing: invitation row, token, e-mail in the outbox
        invitations.invite([Invitee(request.GET["to"])])
        return HttpResponse("invited\n")
    options = {}
    if backend == "stock":  # Django's synchronous backend, as configured in settings
        options = {"host": request.GET["host"], "port": int(request.GET["port"]), "timeout": 2}
    message = EmailMultiAlternatives(
        "You are invited to Gateway Manager",
        TEXT,
        None,
        [request.GET.get("to", "new.user@example.com")],
        connection=get_connection(BACKENDS[backend], fail_silently=True, **options),
    )
    message.attach_alternative(f"<p>{TEXT}</p>", "text/html")
    message.send()
    return HttpResponse("invited\n")


urlpatterns = [path("invite/", invite), path("", include("gatewaymgr.urls"))]
