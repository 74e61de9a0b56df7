import pytest

from smtpsettings.hostnames import InvalidHost, is_loopback, normalize_host


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("smtp.example.com", "smtp.example.com"),
        ("  SMTP.Example.COM.  ", "smtp.example.com"),
        ("mail.bücher.example", "mail.xn--bcher-kva.example"),
        ("почта.рф", "xn--80a1acny.xn--p1ai"),
        ("192.0.2.1", "192.0.2.1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:0db8:0000::0001", "2001:db8::1"),
        ("localhost", "localhost"),
    ],
)
def test_hosts_are_stored_in_ascii(text, stored):
    assert normalize_host(text) == stored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("smtp example.com", "cannot contain spaces"),
        ("smtp.example.com\r\nRCPT TO:<x>", "cannot contain spaces, line breaks"),
        ("smtp.\x00example.com", "control characters"),
        ("smtp://smtp.example.com", "without a scheme"),
        ("smtp.example.com:587", "Enter the port in the Port field"),
        ("under_score.example.com", "not a valid host name"),
        ("-bad.example.com", "not a valid host name"),
        ("999.1.1.1", "neither a valid IP address nor a host name"),
        ("", "Enter the server's host name"),
    ],
)
def test_bad_hosts_say_what_is_wrong(text, message):
    with pytest.raises(InvalidHost, match=message):
        normalize_host(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("smtp.gatewaymgr.test", False),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_is_decided_by_spelling(host, loopback):
    assert is_loopback(host) is loopback
