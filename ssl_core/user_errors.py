"""The error contract of every entry point: a problem with what the user gave (a config key, a data file, a run
folder, the disk) ends the command with one line `error: <what, naming the key or file>` on stderr and exit status
2; a bug keeps its traceback (and exit status 1).

    python -m ssl_core.loop --config configs/demo.yaml --set train.lr=-1     # error: train.lr: must be > 0
    echo $?                                                                    # 2

The errors of the user's input derive from `UserError` (ConfigError, ManifestError, CheckpointError, CacheError,
PseudoLabelError, ...); an OSError (a missing or unreadable file, a full disk) names its file itself. Each `main`
of ssl_core and workflows is wrapped in `reports_user_errors`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

EXIT_USER_ERROR = 2

Main: TypeAlias = Callable[[Sequence[str] | None], int | None]


class UserError(Exception):
    """A problem with the user's input, not a bug: its message names the key, file or row to fix."""


class UnreadableVideos(UserError, ValueError):
    """Every video a run needs from one split fails to decode: training or evaluating it could never proceed."""


def one_line(err: BaseException) -> str:
    """`err`'s message on one line (a YAML parser's or a library's message may span several)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def read_text(path: Path, error: Callable[[str], Exception]) -> str:
    """The UTF-8 text of file `path` (a leading byte-order mark, as spreadsheet programs write, dropped). A file
    that is not UTF-8 or cannot be read raises `error(message)`, the message naming the file (and the line)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise error(f"{path}: file not found") from err
    except IsADirectoryError as err:
        raise error(f"{path}: is a folder, not a file") from err
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err})") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise error(f"{path}: not UTF-8 text (line {line}: byte 0x{data[err.start]:02x}); save it as UTF-8") from err


def reports_user_errors(*extra: type[BaseException]) -> Callable[[Main], Callable[[Sequence[str] | None], int]]:
    """Decorator for an entry point's `main(argv) -> int | None`: a UserError, an OSError or one of `extra` (an
    entry point's own input errors) becomes `error: <message>` on stderr and the return value 2."""
    caught = (UserError, OSError, *extra)

    def wrap(main: Main) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv) or 0
            except caught as err:
                print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
                return EXIT_USER_ERROR

        return wrapper

    return wrap


def first_skipped(skipped: Mapping[str, str], show: int = 3) -> str:
    """The first `show` unreadable videos (path -> why) as `path (why); ...`, and how many more."""
    first = "; ".join(f"{path} ({' '.join(why.split())})" for path, why in sorted(skipped.items())[:show])
    return first + (f"; and {len(skipped) - show} more" if len(skipped) > show else "")


def skipped_videos_line(skipped: Mapping[str, str], what: str, evaluated: int) -> str:
    """The warning an evaluation prints when videos of `what` (e.g. "test") did not decode: how many, the metrics
    cover the `evaluated` others, and the first three of them with why."""
    return (f"warning: skipped {len(skipped)} unreadable {what} video{'s' if len(skipped) != 1 else ''}, metrics "
            f"over the other {evaluated}: {first_skipped(skipped)}")


def unreadable_split(what: str, skipped: Mapping[str, str], total: int) -> UnreadableVideos:
    """The error of a split none of whose `total` videos decodes (`skipped`: path -> why, as far as seen)."""
    path, why = next(iter(sorted(skipped.items())), ("?", "?"))
    return UnreadableVideos(f"none of the {total} videos of the {what} decodes (e.g. {path}: {' '.join(why.split())})"
                            "; fix or remove them from the dataset")
