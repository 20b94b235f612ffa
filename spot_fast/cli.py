"""What the three commands (``spot_fast/train.py``, ``spot-fast-rectify``, ``spot-fast-eval``) share on
their command lines: one parser class and one kind of number option.

``ArgumentParser`` takes an option only as it is spelled (``allow_abbrev=False``: ``--max-step`` is
not ``--max-steps``, so a later option sharing a prefix cannot change what an old command means),
and answers any bad command line with one line, ``PROG: error: WHAT; see PROG --help``, with the
nearest option named for a misspelled one (``did you mean --max-steps?``) instead of the whole usage.
Every parser refuses unknown arguments itself, a subcommand's parser included, so the suggestion
comes from the options of the subcommand that was given.

``--help`` is grouped (``add_argument_group``) and ends with examples (``epilog``, printed as written);
every option's help ends with its default: ``HelpFormatter`` appends argparse's default unless the help
already says it (``default`` in the text: an option whose real default is resolved later, or comes from
the environment, says so in words). ``options_without_help`` lists the options of a parser and its
subcommands that have no help text besides their default (the tests refuse any).

``number`` parses an int or float option and refuses, at parse time, a value that is not finite
(``inf``, ``nan``) or not in its range.

Importing this module imports nothing heavy: commands parse (and refuse) their options before they
import torch.
"""
import argparse
import difflib
import math
import re
import sys

SEED_RANGE = (lambda v: 0 <= v < 2**32, "in [0, 2**32 - 1]")  # numpy's (vLLM seeds numpy with it)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog as written (the examples keep their lines); each option's help followed by
    ``(default: X)`` unless it has no default (None, a flag's False) or its help already names one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)) or not action.option_strings:
            return text
        default = action.default
        if isinstance(default, (list, tuple)):
            default = " ".join(str(v) for v in default) or "none"
        return f"{text} (default: {str(default).replace('%', '%%')})".lstrip()


def options_without_help(parser):
    """``["PROG --option", ...]``: the options of ``parser`` and of its subcommands without a help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                missing += options_without_help(sub)
        elif (action.option_strings and not isinstance(action, argparse._HelpAction)
              and not re.sub(r"\(default: [^)]*\)", "", action.help or "").strip()):  # a default alone says nothing
            missing.append(f"{parser.prog} {action.option_strings[-1]}")
    return missing


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """As ``parse_args``: unknown arguments are an error here, in the parser whose options they missed."""
        self._given = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def suggestion(self):
        """`` (--x: did you mean --y?)`` for the first option given that this parser does not know and
        that is close to one it knows, else "". Whatever the error: a misspelled required option is
        reported as the required one missing."""
        known = [s for s in self._option_string_actions if s.startswith("--")]
        for word in getattr(self, "_given", ()):
            option = word.split("=", 1)[0]
            if option.startswith("--") and option not in self._option_string_actions:
                close = difflib.get_close_matches(option, known, n=1)
                if close:
                    return f" ({option}: did you mean {close[0]}?)"
        return ""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}{self.suggestion()}; see {self.prog} --help\n")


def number(kind, test=None, requirement=""):
    """An argparse ``type``: the ``kind`` (int or float) written in the text, refused unless it is
    finite and passes ``test`` (``requirement`` says what that means, e.g. "> 0")."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if test is not None and not test(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse
