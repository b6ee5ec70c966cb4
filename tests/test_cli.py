"""The command line: one verb per module, and only verbs that exist are advertised."""

from __future__ import annotations

import pytest

from latent_thoughts.cli import build_parser, main


def test_help_advertises_only_verbs_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    verbs = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"chunk", "synthesize", "train", "evaluate", "serve"} <= verbs
    assert "bootstrap" not in verbs
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "bootstrap" not in capsys.readouterr().out
