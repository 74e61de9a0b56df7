"""The OAuth 2.0 providers: what each needs and what it presets. Pure data and rules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    label: str
    host: str  # the SMTP server offered when Server is blank
    port: int
    needs: tuple[str, ...]  # form fields that must be filled in
    credentials: tuple[str, ...]  # the kinds of credential it accepts, in the form's order


PROVIDERS = {
    "microsoft": Provider(
        label="Microsoft 365",
        host="smtp.office365.com",
        port=587,
        needs=("oauth_tenant", "oauth_client_id"),
        credentials=("client_secret", "certificate"),
    ),
    "google": Provider(
        label="Google Workspace",
        host="smtp.gmail.com",
        port=587,
        needs=(),
        credentials=("service_account",),
    ),
    "other": Provider(
        label="another provider",
        host="",
        port=587,
        needs=("oauth_token_url", "oauth_client_id"),
        credentials=("client_secret", "refresh_token"),
    ),
}

CREDENTIAL_LABELS = {
    "client_secret": "a client secret",
    "certificate": "a certificate with its private key",
    "service_account": "a service account key",
    "refresh_token": "a refresh token",
}

FIELD_MESSAGES = {
    "oauth_tenant": "Enter the tenant ID or domain, such as contoso.onmicrosoft.com.",
    "oauth_client_id": "Enter the application (client) ID.",
    "oauth_token_url": "Enter the provider's token URL (https://…).",
}


def describe_sign_in(provider: str, tenant: str) -> str:
    """How the plan sentence names the token's origin."""
    spec = PROVIDERS[provider]
    text = f"with an OAuth 2.0 token from {spec.label}"
    if provider == "microsoft" and tenant:
        text += f" (tenant {tenant})"
    return text
