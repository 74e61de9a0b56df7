"""Reading pasted invitation addresses: every bad entry is named, the good ones go through."""

import pytest
from django.core.exceptions import ValidationError

from gatewaymgr.addresses import (
    MAX_ENTRIES,
    MAX_TOTAL_CHARS,
    Invitee,
    first_problems,
    parse_entries,
    parse_invitees,
)


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


def test_spaces_that_made_the_old_regex_backtrack_are_read_in_one_pass():
    # "a", 100 spaces, "b <bob@example.com>": the lazy name group and \s* of the old
    # "Name <address>" regex tried every split of the spaces.
    invitees, problems = parse_invitees("a" + " " * 100 + "b <bob@example.com>")
    assert problems == [] and invitees == [Invitee("bob@example.com", "a" + " " * 100 + "b")]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("Bob <bob@example.com> <x@example.com>", "unmatched angle brackets"),
        ("Bob bob@example.com>", "unmatched angle brackets"),
        ("<bob@example.com> Bob", "unmatched angle brackets"),
        ("x" * 421, "longer than 420 characters"),
        ("N" * 151 + " <bob@example.com>", "the name is longer than 150 characters"),
    ],
)
def test_brackets_and_lengths_are_checked_without_a_regex(entry, message):
    invitees, problems = parse_invitees(entry)
    assert invitees == [] and message in str(problems[0])


def test_the_box_is_capped_in_entries_and_characters():
    assert len(parse_invitees("\n".join(["x@example.com"] * MAX_ENTRIES))[1]) == 0
    with pytest.raises(ValidationError, match="More than 10,000 entries"):
        parse_invitees(",".join(["x@example.com"] * (MAX_ENTRIES + 1)))
    with pytest.raises(ValidationError, match="The box holds 2,000,001 characters; at most"):
        parse_invitees(" " * (MAX_TOTAL_CHARS + 1))


def test_only_the_first_problems_are_listed_with_how_many_more():
    problems = [f"Line {n}: bad" for n in range(1, 26)]
    assert first_problems(problems[:20]) == problems[:20]
    assert first_problems(problems) == [*problems[:20], "… and 5 more, left in the box below."]
