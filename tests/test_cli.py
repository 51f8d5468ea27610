"""The command line as a user types it: flags checked before any work, one sentence and the right exit status."""

import pytest

from engine.__main__ import main


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `python -m engine *argv`, in this process."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse refuses a flag by exiting 2
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv",
    [
        ["estimate", "--model", "Qwen/Qwen3-0.6B", "--vram", "inf"],
        ["estimate", "--model", "Qwen/Qwen3-0.6B", "--ram", "inf"],
        ["chat", "m", "--prompt", "hi", "--temperature", "nan"],
        ["chat", "m", "--prompt", "hi", "--temperature", "-1"],
    ],
)
def test_numbers_that_are_not_finite_or_below_0_are_refused(capsys, argv):
    """--vram inf ended in an OverflowError report; --temperature nan answered nothing and exited 0."""
    code, _, err = run(capsys, *argv)
    assert code == 2 and f"argument {argv[-2]}: " in err, err
    assert "Traceback" not in err and "report" not in err
