"""jaxformer: self-attention and positional encodings as pure JAX functions, with the plumbing around them."""

__version__ = "0.1.0"


def _early_exit(signum, frame):  # pragma: no cover -- runs in the command's own process
    """SIGINT/SIGTERM before `cli.main` installs its handler: nothing is open or written yet, so one line and the
    shell's status (128 + the signal's number), at once."""
    import os
    import signal

    os.write(2, f"jaxformer: interrupted by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


def _is_the_command() -> bool:
    """Whether this process is the `jaxformer` command (its console script, or `python -m jaxformer.cli`), not a
    program importing the library."""
    import os
    import sys

    argv = getattr(sys, "orig_argv", [])
    return os.path.basename(sys.argv[0]) == "jaxformer" or any(
        a == "-m" and b == "jaxformer.cli" for a, b in zip(argv, argv[1:], strict=False))


if _is_the_command():
    # From the package's first line (imported before cli.py, its options and argparse): a signal during start-up
    # is one line, not a KeyboardInterrupt traceback or a silent death. Before the interpreter runs this line
    # (its own start-up: site-packages' .pth files, ~40 ms on a loaded 2-core machine), a signal has its default
    # action: the process ends with it (a shell's status 128 + n).
    import signal as _signal

    for _sig in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(_sig, _early_exit)
