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
        ('{"restart_threshold_sleep": -0.1}', "restart_threshold_sleep must be a number 0 or more"),
        ('{"ping_threshold": "soon"}', "ping_threshold must be a number 0 or more"),
        ('{"timeout": 0}', "timeout must be a number greater than 0"),
        ('{"max_per_second": true}', "max_per_second must be a number 0 or more"),
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
