"""Reading pasted invitation addresses: every bad entry is named, the good ones go through."""

import pytest

from gatewaymgr.addresses import Invitee, parse_entries, parse_invitees


def test_one_per_line_commas_semicolons_and_names():
    invitees, problems = parse_invitees(
        "bob@example.com\r\n"
        "Carol Jones <carol@Example.COM>, dave@example.com; \n"
        '"Smith, Erin" <erin@example.com>\n'
        "\n"
    )
    assert problems == []
    assert invitees == [
        Invitee("bob@example.com"),
        Invitee("carol@example.com", "Carol Jones"),
        Invitee("dave@example.com"),
        Invitee("erin@example.com", "Smith, Erin"),
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("bob@", "“bob@” is not a valid e-mail address."),
        ("bob example.com", "“bob example.com” is not a valid e-mail address."),
        ("@example.com", "is not a valid e-mail address"),
        ("bob@exa mple.com", "is not a valid e-mail address"),
        ("Bob <bob@example.com", "unmatched angle brackets"),
        ("Bob <>", "has a name but no address"),
        ("x" * 250 + "@example.com", "longer than 254 characters"),
        ("Bob\rBcc: all@example.com <bob@example.com>", "line break"),
        ("Bob\x00 <bob@example.com>", "control character"),
        ("bob\u2028x@example.com", "line break"),
    ],
)
def test_each_malformed_entry_is_reported_with_its_line(entry, message):
    invitees, problems = parse_invitees(f"good@example.com\n{entry}\nalso@example.com")
    assert [i.email for i in invitees] == ["good@example.com", "also@example.com"]
    (problem,) = problems
    assert problem.where == "Line 2"
    assert message in str(problem)
    assert str(problem).startswith("Line 2: ")


def test_each_address_is_invited_once_whatever_its_case():
    invitees, problems = parse_invitees("bob@example.com\nBOB@EXAMPLE.COM, bob@example.com")
    assert invitees == [Invitee("bob@example.com")] and problems == []


def test_arguments_are_entries_of_their_own_so_a_line_break_is_refused_not_split():
    invitees, problems = parse_entries(
        [("Argument 1", "Eve\r\n<eve@example.com>"), ("Argument 2", "ok@example.com")]
    )
    assert invitees == [Invitee("ok@example.com")]
    assert str(problems[0]).startswith("Argument 1: it contains a line break")


def test_an_international_domain_is_accepted():
    invitees, problems = parse_invitees("juergen@bücher.example")
    assert problems == [] and invitees[0].email == "juergen@bücher.example"
