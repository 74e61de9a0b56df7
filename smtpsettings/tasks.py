"""Tasks of the SMTP settings: the "Send test e-mail" run."""

from __future__ import annotations

from django.utils import timezone
from django_tasks import task

from .diagnostics import send_test_email
from .models import SmtpTestRun


@task()
def run_smtp_test(run_id: int) -> bool:
    run = SmtpTestRun.objects.get(pk=run_id)
    diagnosis = send_test_email(run.candidate(), run.recipient)
    problem = diagnosis.problem
    run.result = diagnosis.as_dict()
    if problem and problem.kind == "untrusted":
        run.presented_certificate = problem.certificate_pem
    run.password_token = ""  # the typed password is not kept once the test is over
    run.secrets = {}
    run.finished_at = timezone.now()
    run.save()
    return diagnosis.delivered
