"""What a person sees while a workflow runs, and where everything else goes.

Without --verbose the console shows only vidssl's own lines (INFO and up), errors from any library, one
progress bar per training run with its evaluations and checkpoints as single lines above it, and the closing
table. Everything else is written to the log file of the run folder (`<run folder>/driver.log`,
`<sweep folder>/sweep.log`): the logs of Ray, Ray Data, Ray Train, Tune and MLflow, Python warnings, and all
that Ray's worker processes print (Train workers, Ray Data's split coordinators and tasks, Tune trials).
Entry points without a folder (evaluate, predict, prepare, label-queue) leave the workers' output in Ray's own
session logs (/tmp/ray/session_latest/logs). With --verbose the console shows everything as the libraries print
it; the log file still gets the workers' output and the records that reach the root logger.

    with console.session(args.verbose):        # each entry point's main()
        init_ray()                             # routes the workers' output (workflows/runtime/ray_session.py)
        with console.run_log(run_dir / LOG_FILE):
            ...

The progress bar is drawn by the driver: the rank-0 Train worker sends compact records (ProgressSender) to a
small actor (progress_channel), which the driver polls (TrainingProgress). A bar drawn by the worker could not
update in place: Ray forwards a worker's output line by line, with a prefix.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

LOG_FILE = "driver.log"
# Libraries that attach their own console handlers; without --verbose their records go to the root logger's
# handlers instead (the log file; the console only at ERROR and above). Their children propagate to them.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "mlflow", "alembic", "sqlalchemy.engine", "huey")
# Lines Ray forwards from its worker processes are logged under this name (never to the console: with
# --verbose Ray prints them itself).
WORKER_LOGGER = "ray_workers"  # not under "ray": with --verbose that logger keeps its console handler
_DISPATCH_NAME = "vidssl_worker_output"
# Messages the raylet sends the driver that are logged to the file only (the rest also reach the console, e.g. a
# worker killed for lack of memory): its note that it started many Python worker processes. On a 2-core machine
# a run's decode tasks (fractional data.decode_cpus) plus Ray Train's and Ray Data's own actors pass 4 x 2
# processes; that is expected, and there is nothing to do about it.
_RAYLET_NOTES = ("PYTHON worker processes have been started on node",)
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class _State:
    verbose: bool = True  # outside session(): leave everything as the libraries set it
    active: bool = False
    handler: logging.Handler | None = None
    started_ray: bool = False  # by init_ray during this session: shut down at its end
    saved: dict[str, Any] = field(default_factory=dict)


_state = _State()


def verbose() -> bool:
    return _state.verbose


def ray_started() -> None:
    """init_ray started Ray in this process: the session shuts it down when it ends, while the workers' output
    is still routed (otherwise their last lines would reach the console as the process exits)."""
    if _state.active:
        _state.started_ray = True


class _ConsoleHandler(logging.Handler):
    """Writes to the sys.stderr of the moment (pytest swaps it), around any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # never let the console break the run
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    """vidssl's INFO lines as plain sentences; warnings and errors with their level and origin."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO and record.name.startswith("vidssl"):
            return record.getMessage()
        return f"{record.levelname} {record.name}: {record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else "")


def _console_filter(record: logging.LogRecord) -> bool:
    if record.name == WORKER_LOGGER:
        return False
    if _state.verbose:
        return True
    return record.name == "vidssl" or record.name.startswith("vidssl.") or record.levelno >= logging.ERROR


@contextlib.contextmanager
def session(verbose: bool) -> Iterator[None]:
    """An entry point's console for the duration of its main(); restores the logging set-up it found."""
    root = logging.getLogger()
    _state.saved = {"verbose": _state.verbose, "root_level": root.level,
                    "mlflow_env": os.environ.get("MLFLOW_CONFIGURE_LOGGING"),
                    "loggers": {n: (lg.handlers[:], lg.propagate) for n in LIBRARY_LOGGERS
                                for lg in [logging.getLogger(n)]}}
    _state.verbose = verbose
    _state.active = True
    if not verbose:
        # MLflow configures its console handler when first imported (later, lazily): ask it not to.
        os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
        logging.captureWarnings(True)  # Python warnings -> logger py.warnings -> the log file
    handler = _ConsoleHandler(logging.INFO)
    handler.setFormatter(_ConsoleFormatter())
    handler.addFilter(_console_filter)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _state.handler = handler
    adopt_library_loggers()
    try:
        yield
    finally:
        if _state.started_ray:
            # here: Ray takes a second or more to load, and entry points that never start it import this module
            import ray

            ray.shutdown()
            _state.started_ray = False
        root.removeHandler(handler)
        root.setLevel(_state.saved["root_level"])
        logging.captureWarnings(False)
        if _state.saved["mlflow_env"] is None:
            os.environ.pop("MLFLOW_CONFIGURE_LOGGING", None)
        else:
            os.environ["MLFLOW_CONFIGURE_LOGGING"] = _state.saved["mlflow_env"]
        for name, (handlers, propagate) in _state.saved["loggers"].items():
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = handlers, propagate
        _restore_ray_console()
        _state.verbose = _state.saved["verbose"]
        _state.active = False
        _state.handler = None


def adopt_library_loggers() -> None:
    """Without --verbose, the libraries' records reach the root logger's handlers rather than their own console
    handlers (file handlers, e.g. Ray Data's session log, stay). Idempotent; call again after a library that
    configures itself on import or init (Ray, Ray Data, MLflow) was loaded."""
    if _state.verbose or not _state.active:
        return
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers
                       if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler)]
        lg.propagate = True


def _worker_output(data: Mapping[str, Any]) -> None:
    """A batch of lines a Ray worker printed, as Ray's log monitor forwards them: to the log file(s)."""
    logger = logging.getLogger(WORKER_LOGGER)
    who = data.get("actor_name") or data.get("task_name") or "worker"
    prefix = f"({who} pid={data.get('pid')}{', ip=' + str(data['ip']) if data.get('ip') else ''})"
    stream = "stderr" if data.get("is_err") else "stdout"
    lines = data.get("lines", [])
    if data.get("pid") == "autoscaler":  # its whole status every few seconds: its events only, as Ray prints them
        try:
            from ray._private.worker import filter_autoscaler_events  # here: Ray's private API, once Ray runs

            lines = list(filter_autoscaler_events(lines))
        except Exception:
            lines = []
    for line in lines:
        logger.info("%s %s %s", prefix, stream, line)


def route_worker_output() -> None:
    """Send what Ray's workers print to the log file; without --verbose, not to the console. Call in the driver
    once Ray is initialized. Uses Ray's stream dispatcher (ray._private): where it is missing the output stays
    as Ray prints it."""
    if not _state.active:
        return
    try:
        # here: Ray's private API, only once Ray runs; where it is missing the output stays as Ray prints it
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    names = [name for name, _ in dispatcher.handlers]
    if _DISPATCH_NAME not in names:
        dispatcher.add_handler(_DISPATCH_NAME, _worker_output)
    if not _state.verbose and "ray_print_logs" in names:
        _state.saved["ray_print_logs"] = dict(dispatcher.handlers)["ray_print_logs"]
        dispatcher.remove_handler("ray_print_logs")
    logging.getLogger(WORKER_LOGGER).setLevel(logging.INFO)
    if not _state.verbose:
        _route_raylet_messages()


def _route_raylet_messages() -> None:
    """The raylet's messages to the driver (Ray prints them with print_to_stdstream from its error-listening
    thread): all to the log file, and to the console unless they are _RAYLET_NOTES."""
    try:
        import ray._private.worker as ray_worker  # here: as in route_worker_output
    except ImportError:
        return
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "vidssl", False):
        return

    def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
        _worker_output(data)
        if not any(note in line for line in data.get("lines", []) for note in _RAYLET_NOTES):
            printer(data, ignore_prefix)

    print_to_stdstream.vidssl = True  # type: ignore[attr-defined]
    _state.saved["print_to_stdstream"] = printer
    ray_worker.print_to_stdstream = print_to_stdstream


def _restore_ray_console() -> None:
    try:
        # here: as in route_worker_output
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    dispatcher.remove_handler(_DISPATCH_NAME)
    printer = _state.saved.pop("print_to_stdstream", None)
    if printer is not None:
        import ray._private.worker as ray_worker  # here: as in route_worker_output

        ray_worker.print_to_stdstream = printer
    print_logs = _state.saved.pop("ray_print_logs", None)
    if print_logs is not None and "ray_print_logs" not in [name for name, _ in dispatcher.handlers]:
        # here: Ray takes a second or more to load, and entry points that never start it import this module
        import ray

        if ray.is_initialized():  # the Ray the session found (e.g. a test's) prints again
            dispatcher.add_handler("ray_print_logs", print_logs)


class _RunLog:
    """A log file that receives every record logged in this process and every line Ray's workers print."""

    def __init__(self) -> None:
        self.handler: logging.FileHandler | None = None
        self.root_level = logging.getLogger().level

    def to(self, path: str | Path) -> Path:
        path = Path(path)
        if self.handler is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handler = logging.FileHandler(path, encoding="utf-8")
            self.handler.setLevel(logging.INFO)
            self.handler.setFormatter(logging.Formatter(_FILE_FORMAT))
            root = logging.getLogger()
            root.addHandler(self.handler)
            if root.level > logging.INFO or root.level == logging.NOTSET:
                root.setLevel(logging.INFO)
            adopt_library_loggers()
        return path

    def close(self) -> None:
        if self.handler is not None:
            root = logging.getLogger()
            root.removeHandler(self.handler)
            root.setLevel(self.root_level)
            self.handler.close()
            self.handler = None


_run_logs: list[_RunLog] = []


@contextlib.contextmanager
def run_log(path: str | Path | None = None) -> Iterator[_RunLog]:
    """Log to `path` meanwhile; without a path, from the moment `log_to` names the file (a run's folder is known
    only once it is created or found)."""
    log = _RunLog()
    _run_logs.append(log)
    try:
        if path is not None:
            log.to(path)
        yield log
    finally:
        _run_logs.remove(log)
        log.close()


def log_to(path: str | Path) -> None:
    """The innermost open run_log() starts writing to `path` (nothing happens outside one)."""
    if _run_logs:
        _run_logs[-1].to(path)


def with_run_log(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: the call runs inside a run_log() that its body points at a file with log_to()."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with run_log():
            return fn(*args, **kwargs)

    return wrapper


# ---- the progress bar of a training run ------------------------------------------------------------------


class _Channel:
    """Records from the rank-0 worker, held until the driver takes them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def put(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        del self.records[:-1000]  # a driver that stopped polling must not grow this without bound

    def take(self) -> list[dict[str, Any]]:
        records, self.records = self.records, []
        return records


def progress_channel(**actor_options: Any) -> Any:
    """A Ray actor (no CPU) the rank-0 worker reports its progress to; pass it in the train loop config.
    `actor_options`: Ray actor options, e.g. workflows.runtime.ray_session.on_driver_node()."""
    # here: Ray takes a second or more to load, and entry points that never start it import this module
    import ray

    return ray.remote(num_cpus=0)(_Channel).options(**actor_options).remote()


def _mask_rate(metrics: Mapping[str, float]) -> float | None:
    for key in ("pseudo/mask_rate_primary", *sorted(k for k in metrics if k.startswith("pseudo/mask_rate"))):
        value = metrics.get(key)
        if value is not None and not math.isnan(value):
            return float(value)
    return None


def progress_record(metrics: Mapping[str, float], now: float | None = None) -> dict[str, Any]:
    """The headline numbers of one report (rank 0's averaged metrics) for the driver's bar and event lines."""
    evaluated: dict[str, list[float]] = {}
    for key, value in metrics.items():
        if key.startswith("eval/top1_"):
            role = key.removeprefix("eval/top1_")
            evaluated[role] = [float(value), float(metrics.get(f"eval/top5_{role}", math.nan))]
    loss = metrics.get("loss/total")
    return {"kind": "report", "step": int(metrics["step"]), "t": time.time() if now is None else now,
            "loss": None if loss is None or math.isnan(loss) else float(loss), "mask": _mask_rate(metrics),
            "clips_per_s": float(metrics.get("perf/clips_per_s", math.nan)), "eval": evaluated}


class ProgressSender:
    """The rank-0 worker's end: fire-and-forget records, a step record at most every `interval_s` seconds."""

    def __init__(self, channel: Any, interval_s: float = 0.5) -> None:
        self.channel = channel
        self.interval_s = interval_s
        self._last = -math.inf

    def _put(self, record: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # the driver went away: training goes on
            self.channel.put.remote(record)

    def step(self, step: int) -> None:
        now = time.time()
        if now - self._last >= self.interval_s:
            self._last = now
            self._put({"kind": "step", "step": step, "t": now})

    def report(self, metrics: Mapping[str, float]) -> None:
        self._last = time.time()
        self._put(progress_record(metrics, self._last))

    def checkpoint(self, step: int) -> None:
        self._put({"kind": "checkpoint", "step": step, "t": time.time()})


def bar_size(file: TextIO) -> dict[str, Any]:
    """tqdm's size arguments: the terminal's, followed as it is resized; 100 x 24 where the terminal reports no
    size (some containers' pseudo-terminals say 0 x 0, and tqdm then draws nothing)."""
    try:
        size = os.get_terminal_size(file.fileno())
        if size.columns > 0 and size.lines > 0:
            return {"dynamic_ncols": True}
    except (AttributeError, OSError, ValueError):
        pass
    return {"ncols": 100, "nrows": 24}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


class TrainingProgress:
    """The driver's end: one bar (step / total, loss, mask rate, clips/s, ETA) on a terminal, evaluations and
    checkpoints as single lines. Off a terminal (a pipe, a CI log) there is no bar, only those lines."""

    def __init__(self, channel: Any, total: int, desc: str = "", *, file: TextIO | None = None,
                 events: TextIO | None = None, poll_s: float = 0.5, bar: bool | None = None) -> None:
        self.channel = channel
        self.total = total
        self.file = file if file is not None else sys.stderr
        self.events = events if events is not None else sys.stdout
        self.poll_s = poll_s
        # No channel (e.g. a sweep's trial): no bar either.
        self.show_bar = channel is not None and (self.file.isatty() if bar is None else bar)
        self.desc = desc
        self.step = 0
        self.last: dict[str, Any] = {}
        self._times: deque[tuple[float, int]] = deque(maxlen=64)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bar: Any = None
        if self.show_bar:
            self.bar = tqdm(total=total, desc=desc, file=self.file, leave=True, **bar_size(self.file),
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}{postfix}]")

    # records -> display (no Ray here: unit-testable)
    def handle(self, record: Mapping[str, Any]) -> None:
        step = int(record.get("step", self.step))
        if step > self.step or not self._times:
            self._times.append((float(record.get("t", time.time())), step))
        self.step = max(self.step, step)
        if record.get("kind") == "report":
            self.last = dict(record)
            if record.get("eval"):
                self._line(self.eval_line(record))
        elif record.get("kind") == "checkpoint":
            self._line(f"step {step}/{self.total}  checkpoint saved")
        if self.bar is not None:
            self.bar.n = self.step
            self.bar.set_postfix_str(self.postfix(), refresh=False)

    def eval_line(self, record: Mapping[str, Any]) -> str:
        parts = [f"{role} top-1 {_pct(v[0])} top-5 {_pct(v[1])}" for role, v in record["eval"].items()]
        return f"step {record['step']}/{self.total}  evaluation: " + " | ".join(parts) + self._context(record)

    def _context(self, record: Mapping[str, Any]) -> str:
        shown = []
        if record.get("loss") is not None:
            shown.append(f"loss {record['loss']:.3f}")
        if not math.isnan(record.get("clips_per_s", math.nan)):
            shown.append(f"{record['clips_per_s']:.1f} clips/s")
        return f"  ({', '.join(shown)})" if shown else ""

    def rate(self) -> float | None:
        """Steps per second over the last minute of step records (the workers' clock)."""
        if len(self._times) < 2:
            return None
        t_end, s_end = self._times[-1]
        t0, s0 = next(((t, s) for t, s in self._times if t_end - t <= 60), self._times[0])
        if t0 == t_end:
            t0, s0 = self._times[-2]
        return (s_end - s0) / (t_end - t0) if t_end > t0 and s_end > s0 else None

    def postfix(self) -> str:
        shown = []
        if self.last.get("loss") is not None:
            shown.append(f"loss {self.last['loss']:.3f}")
        if self.last.get("mask") is not None:
            shown.append(f"mask {100 * self.last['mask']:.1f}%")
        if not math.isnan(self.last.get("clips_per_s", math.nan)):
            shown.append(f"{self.last['clips_per_s']:.1f} clips/s")
        rate = self.rate()
        if rate:
            shown.append(f"ETA {_duration((self.total - self.step) / rate)}")
        return ", ".join(shown)

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.events)
        else:
            print(text, file=self.events, flush=True)

    # the polling thread
    def _poll_once(self, timeout_s: float = 10.0) -> None:
        # here: Ray takes a second or more to load, and entry points that never start it import this module
        import ray

        try:
            records = ray.get(self.channel.take.remote(), timeout=timeout_s)
        except Exception:  # a slow or lost channel: the bar just waits
            return
        for record in records:
            self.handle(record)
        if self.bar is not None:
            self.bar.refresh()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll_once()

    def __enter__(self) -> TrainingProgress:
        if self.channel is not None:
            self._thread = threading.Thread(target=self._run, name="vidssl-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._poll_once()  # what arrived after the last poll
        if self.bar is not None:
            self.bar.close()
