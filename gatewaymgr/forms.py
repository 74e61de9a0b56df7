"""Forms for inviting users and for accepting an invitation."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group

from notifications.emails import header_safe

from .addresses import Invitee, Problem, parse_invitees
from .invitations import (
    DEFAULT_VALID_DAYS,
    MAX_VALID_DAYS,
    grantable_groups,
    quoted_names,
    ungrantable_groups,
)
from .models import Invitation


class InviteForm(forms.Form):
    addresses = forms.CharField(
        label="E-mail addresses",
        widget=forms.Textarea(
            attrs={
                "rows": 5,
                "spellcheck": "false",
                "placeholder": "bob@example.com\nCarol Jones <carol@example.com>, dave@example.com",
            }
        ),
        help_text="One per line, or separated by commas, up to 10,000 at once. A name may come "
        "first: Carol Jones <carol@example.com>.",
    )
    groups = forms.ModelMultipleChoiceField(
        queryset=Group.objects.order_by("name"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The new users join these groups, and get their permissions. Only groups "
        "whose permissions you hold yourself are offered.",
    )
    valid_days = forms.IntegerField(
        label="Link valid for (days)",
        initial=DEFAULT_VALID_DAYS,
        min_value=1,
        max_value=MAX_VALID_DAYS,
        help_text=f"After this the link stops working; you can resend it. 1 to {MAX_VALID_DAYS}.",
    )

    invitees: list[Invitee]
    problems: list[Problem]

    def __init__(self, inviter: AbstractBaseUser, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inviter = inviter
        # Offer only what the inviter may give; the queryset stays all groups so that a posted
        # id of another one gets the clear refusal of clean_groups, not "not a valid choice".
        self.grantable = grantable_groups(inviter)
        self.fields["groups"].widget.choices = [(group.pk, group.name) for group in self.grantable]

    def clean_groups(self) -> list[Group]:
        groups = list(self.cleaned_data["groups"])
        refused = ungrantable_groups(self.inviter, groups)
        if refused:
            gives = "it gives" if len(refused) == 1 else "they give"
            raise forms.ValidationError(
                f"You cannot grant {quoted_names(refused)}: {gives} permissions you do not hold "
                "yourself. Only groups whose permissions you hold can be given; ask someone who "
                "holds them to send this invitation."
            )
        return groups

    def clean_addresses(self) -> str:
        text = self.cleaned_data["addresses"]
        try:
            self.invitees, self.problems = parse_invitees(text)
        except forms.ValidationError:
            # Past the caps the box is not echoed back: the error page would be as large as
            # the attack. The message says how to split the list.
            self.data = self.data.copy()
            self.data[self.add_prefix("addresses")] = ""
            raise
        if not self.invitees and not self.problems:
            raise forms.ValidationError("Enter at least one e-mail address.")
        return text


class AcceptInvitationForm(forms.Form):
    email = forms.EmailField(label="E-mail address", disabled=True, required=False)
    name = forms.CharField(
        label="Your name",
        max_length=150,
        widget=forms.TextInput(attrs={"autocomplete": "name"}),
        help_text="As colleagues will see it, e.g. Carol Jones.",
    )
    username = forms.CharField(
        label="User name",
        max_length=150,
        widget=forms.TextInput(attrs={"autocomplete": "username"}),
        help_text="For signing in. Letters, digits and @ . + - _ only.",
    )
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, invitation: Invitation, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.invitation = invitation
        self.fields["email"].initial = invitation.email  # shown, never taken from the POST

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if header_safe(name) != name.strip():
            raise forms.ValidationError(
                "The name cannot contain line breaks or control characters."
            )
        return name.strip()

    def clean_username(self) -> str:
        User = get_user_model()
        username = User.normalize_username(self.cleaned_data["username"].strip())
        User.username_validator(username)
        if User.objects.filter(**{f"{User.USERNAME_FIELD}__iexact": username}).exists():
            raise forms.ValidationError(f"The user name “{username}” is taken. Choose another.")
        return username

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        User = get_user_model()
        if User.objects.filter(email__iexact=self.invitation.email).exists():
            raise forms.ValidationError(
                f"An account for {self.invitation.email} exists already: sign in with it, or "
                f"ask {self.invitation.inviter} if you forgot its password."
            )
        first, second = data.get("password1"), data.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords differ. Type the same one twice.")
        elif first:
            User = get_user_model()
            candidate = User(
                username=data.get("username", ""),
                email=self.invitation.email,
                first_name=data.get("name", ""),
            )
            try:
                password_validation.validate_password(first, candidate)
            except forms.ValidationError as error:
                self.add_error("password1", error)
        return data
