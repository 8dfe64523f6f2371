"""Every `sockmesh ...` command in docs/istio.md exists, with the flags it uses.

Commands in the page's code blocks are parsed whole by the real CLI parser
(integration.cli.build_parser), so a renamed flag, a missing required one or a bad value
fails here.  A subcommand that is only a placeholder in this build (a module not written
yet) does not count as existing.  Inline mentions (`sockmesh status`) name a subcommand and
maybe flags: those must exist too.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
from pathlib import Path

import pytest

from integration import cli

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "istio.md"
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "<<", ">&", "2>", "("}


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[\w-]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def command_lines(block: str) -> list[str]:
    """Shell command lines of a code block: continuations joined, heredoc bodies dropped."""
    lines: list[str] = []
    buf = ""
    heredoc_end: str | None = None
    for line in block.splitlines():
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if m:
            heredoc_end = m.group(1)
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    if buf:
        lines.append(buf)
    return [ln for ln in lines if ln.strip()]


def sockmesh_invocations(line: str) -> list[list[str]]:
    """The argument lists given to `sockmesh` (or a path ending in /sockmesh) on a line.

    Only a command position counts: the first word of a simple command (after VAR=value
    assignments) or the word after `--` (`kubectl exec POD -- sockmesh ...`), so a release
    or object named sockmesh is not taken for the command.
    """
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    simple: list[list[str]] = [[]]
    for tok in lexer:
        if tok in SHELL_OPERATORS or tok[0] in "|&;<>(":
            simple.append([])
        else:
            simple[-1].append(tok)
    out = []
    for words in simple:
        starts = [next((i for i, w in enumerate(words) if not re.match(r"\w+=", w)), None)]
        starts += [i + 1 for i, w in enumerate(words) if w == "--"]
        for i in starts:
            if i is not None and i < len(words) and (
                    words[i] == "sockmesh" or words[i].endswith("/sockmesh")):
                out.append(words[i + 1:])
    return out


def doc_invocations() -> list[list[str]]:
    text = DOC.read_text()
    return [inv for block in code_blocks(text) for line in command_lines(block)
            for inv in sockmesh_invocations(line)]


def inline_mentions() -> list[list[str]]:
    text = re.sub(r"^```.*?^```", "", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [shlex.split(span)[1:] for span in re.findall(r"`([^`\n]+)`", text)
            if span.startswith("sockmesh ")]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_page_runs_sockmesh_commands() -> None:
    # the checks below must have something to check
    invs = doc_invocations()
    assert {inv[0] for inv in invs} >= {"status", "explain", "tables"}, invs


def readers_cgroups(argv: list[str], root: Path) -> None:
    """Create, under ``root``, the relative ``--cgroup`` paths a documented command names.

    `sockmesh run --cgroup` checks that the cgroup exists; the page's commands create
    theirs in an earlier step on the reader's machine, not on the one running this test.
    The parser still sees the value, relative to a cgroup v2 root (which is ``root`` here).
    """
    for flag, value in itertools.pairwise(argv):
        if flag == "--cgroup" and not value.startswith("/"):
            (root / value).mkdir(parents=True, exist_ok=True)
            (root / value / "cgroup.procs").touch()


@pytest.mark.parametrize("argv", doc_invocations(), ids=" ".join)
def test_documented_command_parses(argv: list[str], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from integration.commands import _args

    monkeypatch.setattr(_args, "CGROUP2_ROOT", tmp_path)
    readers_cgroups(argv, tmp_path)
    parser = cli.build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`sockmesh {' '.join(argv)}` in docs/istio.md is rejected by the CLI "
                    f"(exit {exc.code}); see the error above")
    assert callable(args._run), f"`sockmesh {argv[0]}` has no command to run"


@pytest.mark.parametrize("argv", inline_mentions(), ids=" ".join)
def test_inline_mention_names_a_real_subcommand_and_flags(argv: list[str]) -> None:
    parser = cli.build_parser()
    subs = subparsers(parser)
    assert argv and argv[0] in subs, f"`sockmesh {' '.join(argv)}`: no such subcommand"
    sub = subs[argv[0]]
    unknown = [a.split("=")[0] for a in argv[1:]
               if a.startswith("-") and a.split("=")[0] not in sub._option_string_actions]
    assert not unknown, f"`sockmesh {argv[0]}` has no {unknown}"


def test_extraction_sees_what_a_reader_sees() -> None:
    # the parsing above is only as good as this extraction
    block = ("kubectl -n x exec pod -- sockmesh status --json\n"
             "helm install sockmesh deploy/helm/sockmesh; rm -r /sys/fs/bpf/sockmesh\n"
             ".venv/bin/sockmesh explain --config-dump d.json --port 80 \\\n"
             "    -H 'end-user: jason' http://a/ > out.txt  # comment\n"
             "cat > f <<'YAML'\nsockmesh not-a-command\nYAML\n")
    invs = [inv for ln in command_lines(block) for inv in sockmesh_invocations(ln)]
    assert invs == [["status", "--json"],
                    ["explain", "--config-dump", "d.json", "--port", "80", "-H",
                     "end-user: jason", "http://a/"]]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["status", "--no-such-flag"])
