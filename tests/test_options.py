"""The Options (json) field: strict, typed, and every error names its key."""

import pytest

from smtpsettings.options import Fingerprint, OptionsError, SmtpOptions, parse_options


def errors_of(raw) -> str:
    with pytest.raises(OptionsError) as caught:
        parse_options(raw)
    return " ".join(caught.value.messages)


def test_blank_means_all_defaults_from_the_design_table():
    assert parse_options("") == parse_options("{}") == parse_options(None) == SmtpOptions()
    defaults = SmtpOptions()
    assert defaults.verify_peer is True
    assert defaults.restart_threshold == 100
    assert defaults.restart_threshold_sleep == 0
    assert defaults.ping_threshold == 100
    assert defaults.timeout == 30
    assert defaults.max_per_second == 0
    assert defaults.auto_tls is True and defaults.require_tls is False
    assert defaults.peer_fingerprint is defaults.source_ip is defaults.local_domain is None


def test_the_help_pages_own_example_turns_verification_off():
    assert parse_options('{"verify_peer":"false"}').verify_peer is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ('"true"', True),
        ('"false"', False),
        ('"1"', True),
        ('"0"', False),
        ('"yes"', True),
        ('"no"', False),
        ('"ON"', True),
        ('"off"', False),
    ],
)
def test_booleans_accept_json_booleans_and_the_documented_strings(text, expected):
    assert parse_options(f'{{"auto_tls": {text}}}').auto_tls is expected


@pytest.mark.parametrize("value", ['"maybe"', '""', "1", "0", "null", '"nope"'])
def test_any_other_boolean_value_is_an_error_never_a_silent_false(value):
    message = errors_of(f'{{"verify_peer": {value}}}')
    assert message.startswith("verify_peer must be true or false")


def test_every_key_of_the_design_table_is_parsed_to_its_type():
    options = parse_options(
        {
            "verify_peer": False,
            "peer_fingerprint": "AB:" * 31 + "AB",
            "local_domain": "Mail.Example.COM",
            "restart_threshold": 5,
            "restart_threshold_sleep": 0.5,
            "ping_threshold": 10,
            "timeout": 2.5,
            "source_ip": "127.0.0.2",
            "max_per_second": 20,
            "auto_tls": "no",
            "require_tls": "false",
        }
    )
    assert options == SmtpOptions(
        verify_peer=False,
        peer_fingerprint=Fingerprint("sha256", "ab" * 32),
        local_domain="mail.example.com",
        restart_threshold=5,
        restart_threshold_sleep=0.5,
        ping_threshold=10,
        timeout=2.5,
        source_ip="127.0.0.2",
        max_per_second=20,
        auto_tls=False,
        require_tls=False,
    )


@pytest.mark.parametrize(
    ("digits", "algorithm"),
    [("a" * 64, "sha256"), ("B" * 40, "sha1"), ("0c" * 16, "md5")],
)
def test_fingerprint_algorithm_is_chosen_by_length_ignoring_colons_and_case(digits, algorithm):
    with_colons = ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
    parsed = parse_options({"peer_fingerprint": with_colons}).peer_fingerprint
    assert parsed == Fingerprint(algorithm, digits.lower())


def test_international_local_domain_is_sent_as_punycode_and_ip_stays_an_ip():
    assert parse_options({"local_domain": "bücher.example"}).local_domain == (
        "xn--bcher-kva.example"
    )
    assert parse_options({"local_domain": "192.0.2.7"}).local_domain == "192.0.2.7"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("[]", 'must be a JSON object such as {"verify_peer": false}, not a list'),
        ('"x"', "not a string"),
        ("42", "not a number"),
        ("{nope", "not valid JSON"),
        ('{"verfy_peer": false}', 'Unknown option "verfy_peer". Did you mean "verify_peer"?'),
        ('{"restart_treshold": 3}', 'Did you mean "restart_threshold"?'),
        ('{"colour": "blue"}', "Valid options are: verify_peer, peer_fingerprint"),
        ('{"restart_threshold": -1}', "restart_threshold must be a whole number, 0 or more"),
        ('{"restart_threshold": 2.5}', "restart_threshold must be a whole number"),
        ('{"restart_threshold": "100"}', "restart_threshold must be a whole number"),
        (
            '{"restart_threshold_sleep": -0.1}',
            "restart_threshold_sleep must be a number from 0 to 600",
        ),
        ('{"ping_threshold": "soon"}', "ping_threshold must be a number from 0 to 86400"),
        ('{"timeout": 0}', "timeout must be a number from 1 to 600"),
        ('{"max_per_second": true}', "max_per_second must be a number from 0 to 10000"),
        ('{"peer_fingerprint": "abc"}', "peer_fingerprint must be the certificate's SHA-256"),
        ('{"peer_fingerprint": "' + "z" * 64 + '"}', "64 hexadecimal digits"),
        ('{"source_ip": "my-laptop"}', "source_ip must be an IP address"),
        ('{"local_domain": "bad name"}', "local_domain must be a host name or IP address"),
        ('{"require_tls": true, "auto_tls": false}', "contradict each other"),
    ],
)
def test_bad_options_get_a_message_that_names_the_key(raw, expected):
    assert expected in errors_of(raw)


def test_all_problems_are_reported_at_once():
    with pytest.raises(OptionsError) as caught:
        parse_options('{"verify_peer": "maybe", "timeout": -1, "verfy": 1}')
    assert len(caught.value.messages) == 3


def test_a_megabyte_blob_is_refused_without_parsing_it():
    blob = '{"verify_peer": "' + "x" * 1_000_000 + '"}'
    assert "the limit is 10,000" in errors_of(blob)


def test_options_are_immutable():
    options = parse_options('{"timeout": 5}')
    with pytest.raises(AttributeError):
        options.timeout = 10


# -- hostile input: nesting, huge numbers, values out of range (issue 10, hole 7) ------------


def nested(depth: int) -> str:
    return '{"timeout": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (nested(4_000), "The options JSON is nested 4,001 levels deep; at most 5 are allowed."),
        (nested(5), "nested 6 levels deep"),
        (
            '{"timeout": ' + "9" * 5_000 + "}",
            "The options JSON contains a number with 5,000 digits; at most 40",
        ),
        ('{"timeout": 1' + "0" * 3_000 + ".5}", "a number with 3,002 digits"),
        ('{"timeout": NaN}', "The options JSON contains NaN, which is not a JSON number."),
        ('{"timeout": Infinity}', "contains Infinity, which is not a JSON number"),
    ],
)
def test_hostile_json_is_an_options_error_not_a_crash(raw, expected):
    assert expected in errors_of(raw)


@pytest.mark.parametrize(
    ("key", "bad", "expected"),
    [
        ("timeout", 0, "timeout must be a number from 1 to 600 (seconds), not 0"),
        ("timeout", 0.5, "timeout must be a number from 1 to 600"),
        ("timeout", 601, "timeout must be a number from 1 to 600 (seconds), not 601"),
        ("timeout", 1e308, "from 1 to 600"),
        (
            "restart_threshold",
            100_001,
            "restart_threshold must be a whole number, 0 or more, at most 100000",
        ),
        ("restart_threshold_sleep", 601, "restart_threshold_sleep must be a number from 0 to 600"),
        ("ping_threshold", 86_401, "ping_threshold must be a number from 0 to 86400"),
        ("max_per_second", 10_001, "max_per_second must be a number from 0 to 10000"),
    ],
)
def test_numeric_options_are_bounded_and_the_error_says_the_range(key, bad, expected):
    assert expected in errors_of({key: bad})


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("timeout", 1, 600),
        ("restart_threshold", 0, 100_000),
        ("restart_threshold_sleep", 0, 600),
        ("ping_threshold", 0, 86_400),
        ("max_per_second", 0, 10_000),
    ],
)
def test_the_bounds_themselves_are_valid(key, low, high):
    assert getattr(parse_options({key: low}), key) == low
    assert getattr(parse_options({key: high}), key) == high


# Through the real settings page and the real command: a message at the field, never a 500.
HOSTILE_OPTIONS = [
    ('{"timeout": ' + "[" * 4_000 + "]" * 4_000 + "}", "nested 4,001 levels deep"),
    ('{"timeout": ' + "9" * 5_000 + "}", "a number with 5,000 digits"),
    ('{"timeout": 3600}', "timeout must be a number from 1 to 600"),
]
PAGE_FORM = {
    "sender_email": "gateway@example.com",
    "sender_name": "",
    "host": "smtp.example.com",
    "port": "587",
    "encryption": "auto",
    "username": "",
    "password": "",
    "trusted_certificate": "",
}


@pytest.mark.django_db
@pytest.mark.parametrize(("options", "expected"), HOSTILE_OPTIONS)
def test_the_settings_page_shows_hostile_options_at_the_field(admin_client, options, expected):
    from smtpsettings.models import SmtpSettings

    response = admin_client.post("/settings/smtp/", {**PAGE_FORM, "options": options})
    assert response.status_code == 200
    errors = " ".join(response.context["form"].errors["options"])
    assert expected in errors
    assert 'id="field-options"' in response.content.decode()
    assert not SmtpSettings.objects.filter(host="smtp.example.com").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("options", "expected"), HOSTILE_OPTIONS)
def test_the_command_reports_hostile_options_at_the_flag(options, expected):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError) as caught:
        call_command(
            "smtp_settings",
            "set",
            "--sender=gateway@example.com",
            "--host=smtp.example.com",
            f"--options={options}",
        )
    assert "Nothing was saved." in str(caught.value)
    assert "--options: " in str(caught.value) and expected in str(caught.value)
