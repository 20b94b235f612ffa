"""--help of the three commands: every option has a help text and shows its default, the trainer's
options are in named sections, and each help ends with examples. Parsers only: no model, no torch work."""
import argparse
import dataclasses

import pytest

from spot_fast.cli import options_without_help
from spot_fast.config import HELP_GROUPS, TrainConfig, build_parser
from spot_fast.evaluate.__main__ import parser as eval_parser
from spot_fast.rectify.__main__ import parser as rectify_parser

PARSERS = {"train": build_parser, "eval": eval_parser, "rectify": rectify_parser}


def all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from all_parsers(sub)


@pytest.mark.parametrize("command", PARSERS)
def test_every_option_has_a_help_text(command):
    assert options_without_help(PARSERS[command]()) == []


@pytest.mark.parametrize("command", PARSERS)
def test_every_option_with_a_default_shows_it_and_help_ends_with_examples(command):
    for parser in all_parsers(PARSERS[command]()):
        assert "\n\nexamples" in parser.format_help(), parser.prog  # the epilog, after the options
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and action.dest != "help":
                assert "default" in parser._get_formatter()._get_help_string(action), (parser.prog, action.dest)


def test_every_training_option_is_in_a_section_with_its_default():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    grouped = [name for group in HELP_GROUPS.values() for name in group]
    assert sorted(set(names) - set(grouped)) == [] and sorted(set(grouped) - set(names)) == []
    assert len(grouped) == len(set(grouped))  # one section each
    text = build_parser().format_help()
    sections = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert sections[:1 + len(HELP_GROUPS)] == ["options", *HELP_GROUPS] and "other options" not in sections
    flat = " ".join(text.split())
    for phrase in ("--beta BETA reward scale", "(default: 0.1)", "--epochs EPOCHS passes over the training pairs",
                   "(default: 2, or 6 for the built-in model)", "--zero-stage {0,1,2,3} DeepSpeed ZeRO stage"):
        assert phrase in flat, phrase


def test_eval_and_rectify_show_their_defaults():
    assert "(default: 32768)" in " ".join(eval_parser().format_help().split())
    sub = next(a for a in rectify_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "largest change ratio kept (default: 0.6)" in " ".join(sub["verify"].format_help().split())
    assert "(default: $SPOT_ORACLE_API_KEY" in " ".join(sub["correct"].format_help().split())
