"""The IPython surface: ``%%energy``, ``%energy`` and autolog.  Parsing, execution and display only."""

from __future__ import annotations

import ast
import shlex
import sys
import time
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments

from .config import SETTING_NAMES, ConfigError, EnergySettings, suggest, unknown_variables
from .display import LiveReadout, load_report, status_text, summary_line
from .runtime import current, get_tracker, new_tracker, set_tracker
from .runs import BudgetExceeded, Run
from .tracking import Tracker
from .validate import (check_name, check_param_key, check_positive, check_units, parse_energy,
                       status_for)


def _parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--param takes KEY=VALUE, got {item!r} (for example --param lr=0.01)")
        key, value = item.split("=", 1)
        key = key.strip()
        try:
            check_param_key(key)
        except ValueError as exc:
            raise UsageError(f"--param {item!r}: {exc}") from None
        if key in params:
            raise UsageError(f"--param {key!r} is given twice ({params[key]!r} and {value!r})")
        params[key] = value
    return params


def _parse_count(text: str, flag: str) -> float:
    """A positive finite number given on the magic's line (``--units``, ``--timeout``)."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} takes a number, not {text!r}") from None
    try:
        return check_positive(value, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


class CellArgs(NamedTuple):
    """The ``%%energy`` line, parsed and checked: a pure function of the line (see ``_parse_cell_args``)."""

    output: str | None
    run: str | None
    sweep: str | None
    params: Mapping[str, str]  # read-only: the same object serves every cell with this line
    units: tuple[float, str] | None
    quiet: bool
    no_log: bool
    live: bool


#: Distinct ``%%energy`` lines whose parse is kept (a notebook has a handful; a sweep generated
#: with ``--param lr={lr}`` has one per value).  Past this the oldest entry is dropped.
CELL_ARGS_CACHED = 256


def _name(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@magics_class
class EnergyMagics(Magics, EnergySettings):
    """Energy of cells, runs and sweeps.  Settings (``c.EnergyMagics.<name>``): docs/configuration.md."""

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)  # reads every setting: ConfigError for a bad one
        self._autolog_window = None
        self._autolog_run: Run | None = None
        self._autolog_on = False
        self._session_hooks = False
        self.config_warnings: list[str] = []
        #: ``%%energy`` line -> its parse.  Only lines that parsed cleanly are kept, so a bad line
        #: is parsed (and rejected with the same UsageError) every time.
        self._cell_args: dict[str, CellArgs] = {}

    # ---- configuration ----------------------------------------------------------------------
    def build_config(self) -> EnergySettings:
        """The settings the tracker keeps (a copy: a later ``%config`` does not change them).

        Also collects :attr:`config_warnings`: ``IPYTHON_ENERGY_*`` variables and
        ``EnergyMagics`` options that are not settings (typos).
        """
        warnings = unknown_variables(self.environ)
        section = self.config.get("EnergyMagics", {}) if self.config is not None else {}
        warnings += [  # traitlets only logs a misspelt trait to the application log
            f"unknown setting EnergyMagics.{name}{suggest(name, SETTING_NAMES)}; it is ignored"
            for name in section if name not in SETTING_NAMES
        ]
        self.config_warnings = warnings
        return self.with_values()

    @property
    def tracker(self) -> Tracker:
        return get_tracker()

    # ---- %%energy ---------------------------------------------------------------------------
    @magic_arguments()
    @argument("-o", "--output", metavar="NAME", help="Store the Measurement in the user namespace as NAME.")
    @argument("--run", metavar="NAME", help="Measure the cell as (part of) run NAME; a new run ends with the cell.")
    @argument("--sweep", metavar="NAME", help="The run belongs to sweep NAME (started or joined; stays active).")
    @argument("--param", metavar="KEY=VALUE", action="append", default=[],
              help="A parameter of the run, logged as an MLflow param. Repeatable.")
    @argument("--units", metavar="N", help="Units of work done by the cell, for joules per unit.")
    @argument("--unit", metavar="WORD", help="What --units counts (samples, tokens, images…); default samples.")
    @argument("--quiet", action="store_true", help="Print no summary line.")
    @argument("--no-log", action="store_true", help="Measure and print, but log nothing to MLflow.")
    @argument("--live", action="store_true",
              help="Show a live readout under the running cell (power, joules so far, elapsed), every second.")
    @cell_magic
    def energy(self, line: str, cell: str):
        """Measure the energy of this cell and log it to MLflow.

        After the cell, one line: joules, duration, mean/peak power, the split per domain
        with the method of each (counter / polled / estimated / replay), and the run and
        sweep totals.  The cell's own exception propagates unchanged; its run is then
        marked FAILED (KILLED on KeyboardInterrupt).

        Examples::

            %%energy --sweep mlp --param hidden=64 --param lr=0.01 --units 1797 --unit samples
            model.fit(X, y)
        """
        __tracebackhide__ = True  # the user's traceback starts in their cell
        args = self._cell_args.get(line)
        if args is None:
            args = self._parse_cell_args(line)
        params, run_name, sweep_name, units = args.params, args.run, args.sweep, args.units
        tracker = get_tracker()
        count = self.shell.execution_count
        try:  # which run the cell belongs to; everything is checked before the cell runs
            scope = tracker.begin_cell(f"In [{count}]", run_name=run_name, sweep_name=sweep_name, params=params,
                                       units=units, log=tracker.config.log and not args.no_log)
        except (BudgetExceeded, ValueError) as exc:
            raise UsageError(str(exc)) from None
        run = scope.run
        live = LiveReadout(scope.window) if args.live else None
        status = "FINISHED"
        try:
            return self._execute(cell)
        except BaseException as exc:
            status = status_for(type(exc))
            raise
        finally:
            m = scope.end(status, count)
            if args.output:
                self.shell.user_ns[args.output] = m
            text = None if (args.quiet or tracker.config.quiet) else summary_line(m, run, tracker)
            if live is not None:
                live.finish(text)
            elif text:
                print(text)
            self._warn_backend(tracker)

    def _parse_cell_args(self, line: str) -> CellArgs:
        """Parse and check the ``%%energy`` line; UsageError for anything wrong with it.

        Depends on nothing but ``line``: the result is kept per line string, so a repeated line
        (the usual case: an empty one, or the same options cell after cell) is not parsed again.
        What depends on the tracker's state (an active run, a sweep's budget) is checked per cell.
        """
        try:  # POSIX quoting, so --sweep 'my sweep' names my sweep
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%%energy: {exc}") from None
        a = self.energy.parser.parse_args(words)
        if a.output is not None and not a.output.isidentifier():
            raise UsageError(f"-o takes a Python name, not {a.output!r}")
        params = _parse_params(a.param)
        run_name = _name(a.run, "run")
        sweep_name = _name(a.sweep, "sweep")
        units: tuple[float, str] | None = None
        if a.units is not None:
            n = _parse_count(a.units, "--units")
            try:
                units = check_units(n, a.unit or "samples")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        elif a.unit is not None:
            raise UsageError("--unit names what --units counts; give --units N too")
        args = CellArgs(a.output, run_name, sweep_name, MappingProxyType(params), units,
                        bool(a.quiet), bool(a.no_log), bool(a.live))
        cache = self._cell_args
        if len(cache) >= CELL_ARGS_CACHED:
            del cache[next(iter(cache))]
        cache[line] = args
        return args

    def _execute(self, cell: str) -> Any:
        """Run the cell in the user namespace as ``%%time`` does, returning its last expression."""
        __tracebackhide__ = True
        shell = self.shell
        source = shell.transform_cell(cell)
        tree = shell.transform_ast(shell.compile.ast_parse(source))
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        ns = shell.user_ns
        filename = shell.compile.cache(source, shell.execution_count, raw_code=cell)  # tracebacks show the cell
        exec(shell.compile(tree, filename, "exec"), ns, ns)
        if last is not None:
            return eval(shell.compile(last, filename, "eval"), ns, ns)
        return None

    def _warn_backend(self, tracker: Tracker) -> None:
        warning = tracker.backend_warning()
        if warning:
            print(warning, file=sys.stderr)

    # ---- %energy ----------------------------------------------------------------------------
    @line_magic("energy")
    def energy_line(self, line: str):
        """Control energy tracking.

        Usage::

            %energy                                   status: sensors, power now, active run and sweep
            %energy sweep NAME [--planned N] [--budget 5kJ] [--stop-at-budget]
            %energy run NAME [--param KEY=VALUE ...]  start a run; later cells belong to it
            %energy end [run|sweep]                   end the active run (or, with none, the sweep)
            %energy autolog on|off                    measure every cell as a cell of the active run
            %energy chart [NAME]                      the sweep's chart, inline
            %energy flush [--timeout 30]              wait until MLflow has every measurement
        """
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%energy: {exc}") from None
        if not words:
            return self._status()
        command, rest = words[0], words[1:]
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            raise UsageError(f"%energy: unknown command {command!r}; use one of: sweep, run, end, autolog, "
                             "chart, flush (or %energy alone for the status)")
        return handler(rest)

    @staticmethod
    def _parser(prog: str) -> MagicArgumentParser:
        return MagicArgumentParser(prog=f"%energy {prog}", add_help=False)

    def _cmd_sweep(self, words: list[str]):
        p = self._parser("sweep")
        p.add_argument("name")
        p.add_argument("--planned", type=str)
        p.add_argument("--budget", type=str)
        p.add_argument("--stop-at-budget", action="store_true")
        a = p.parse_args(words)
        planned = None
        if a.planned is not None:
            try:
                planned = int(a.planned)
            except ValueError:
                raise UsageError(f"--planned takes a whole number of runs, not {a.planned!r}") from None
        budget = None
        if a.budget is not None:
            try:
                budget = parse_energy(a.budget)
            except ValueError as exc:
                raise UsageError(f"--budget: {exc}") from None
        if a.stop_at_budget and budget is None:
            raise UsageError("--stop-at-budget needs --budget")
        try:
            sweep = self.tracker.start_sweep(_name(a.name, "sweep"), planned=planned, budget_j=budget,
                                             stop_at_budget=a.stop_at_budget)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        print(f"ipython-energy: {sweep.describe()} — runs started now belong to it")

    def _cmd_run(self, words: list[str]):
        p = self._parser("run")
        p.add_argument("name")
        p.add_argument("--param", action="append", default=[])
        a = p.parse_args(words)
        params = _parse_params(a.param)
        try:
            run = self.tracker.start_run(_name(a.name, "run"), params, activate=True)
        except (ValueError, BudgetExceeded) as exc:
            raise UsageError(str(exc)) from None
        where = f" in sweep {run.sweep.name!r}" if run.sweep else ""
        print(f"ipython-energy: run {run.name!r} started{where}; %energy end closes it")

    def _cmd_end(self, words: list[str]):
        if len(words) > 1 or (words and words[0] not in ("run", "sweep")):
            raise UsageError("%energy end takes nothing, 'run' or 'sweep'")
        tracker = self.tracker
        what = words[0] if words else ("run" if tracker.run is not None else "sweep")
        if what == "run":
            if tracker.run is None:
                raise UsageError("%energy end run: no run is active")
            run = tracker.run
            m = tracker.end_run(run)
            print(f"ipython-energy: run {run.name!r} ended: {m.summary()}")
            if run.sweep is not None:
                print(f"ipython-energy: {run.sweep.describe()}")
        else:
            if tracker.sweep is None:
                raise UsageError("%energy end: no run or sweep is active")
            sweep = tracker.end_sweep()
            print(f"ipython-energy: {sweep.describe()} — ended")
        self._warn_backend(tracker)

    def _cmd_autolog(self, words: list[str]):
        if len(words) != 1 or words[0] not in ("on", "off"):
            raise UsageError("%energy autolog takes on or off")
        self.set_autolog(words[0] == "on")
        print(f"ipython-energy: autolog {words[0]}")

    def _cmd_flush(self, words: list[str]):
        p = self._parser("flush")
        p.add_argument("--timeout", type=str, default="30")
        a = p.parse_args(words)
        timeout = _parse_count(a.timeout, "--timeout")
        ok = self.tracker.flush(timeout)
        print("ipython-energy: MLflow has every measurement" if ok else
              f"ipython-energy: not everything reached MLflow within {timeout:g} s; it stays in the spool")

    def _cmd_chart(self, words: list[str]):
        if len(words) > 1:
            raise UsageError("%energy chart takes at most one sweep name")
        tracker = self.tracker
        if words:
            sweep = tracker.sweeps.get(words[0])
            if sweep is None:
                raise UsageError(f"%energy chart: no sweep named {words[0]!r} in this session "
                                 f"(known: {', '.join(tracker.sweeps) or 'none'})")
        else:
            sweep = tracker.sweep or (list(tracker.sweeps.values())[-1] if tracker.sweeps else None)
            if sweep is None:
                raise UsageError("%energy chart: no sweep yet; start one with %energy sweep NAME")
        from .charts import sweep_chart
        from .runs import sweep_data

        return sweep_chart(sweep_data(sweep))

    def _status(self) -> None:
        tracker = self.tracker
        print(status_text(tracker))

    # ---- autolog ----------------------------------------------------------------------------
    def set_autolog(self, on: bool) -> None:
        events = self.shell.events
        if on and not self._autolog_on:
            events.register("pre_run_cell", self._pre_run_cell)
            events.register("post_run_cell", self._post_run_cell)
            self._autolog_on = True
        elif not on and self._autolog_on:
            events.unregister("pre_run_cell", self._pre_run_cell)
            events.unregister("post_run_cell", self._post_run_cell)
            self._autolog_on = False
            if self._autolog_run is not None:
                self.tracker.end_run(self._autolog_run)
                self._autolog_run = None

    @staticmethod
    def _measured_elsewhere(raw: str) -> bool:
        head = raw.lstrip()
        return head.startswith("%%energy") or head.startswith("%energy")

    # ---- the session's "other cells" ------------------------------------------------------------
    def set_session_hooks(self, on: bool) -> None:
        """Count executing cells for the session's parts (``Meter.cell_began``/``cell_ended``).
        Registered at load, whatever autolog says; O(1) per cell."""
        events = self.shell.events
        if on and not self._session_hooks:
            events.register("pre_run_cell", self._session_pre_cell)
            events.register("post_run_cell", self._session_post_cell)
        elif not on and self._session_hooks:
            events.unregister("pre_run_cell", self._session_pre_cell)
            events.unregister("post_run_cell", self._session_post_cell)
        self._session_hooks = on

    def _session_pre_cell(self, info) -> None:
        tracker = current()
        if tracker is not None:
            tracker.meter.cell_began()

    def _session_post_cell(self, result) -> None:
        tracker = current()
        if tracker is not None:
            tracker.meter.cell_ended()

    def _pre_run_cell(self, info) -> None:
        self._autolog_window = None
        if self._measured_elsewhere(info.raw_cell or ""):
            return
        self._autolog_window = self.tracker.meter.begin("autolog", cell=True)

    def _post_run_cell(self, result) -> None:
        window, self._autolog_window = self._autolog_window, None
        if window is None:
            return
        m = window.end()
        tracker = self.tracker
        run = tracker.run
        if run is None or run.measurement is not None:
            if self._autolog_run is None or self._autolog_run.measurement is not None:
                self._autolog_run = tracker.start_run(f"autolog {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                                      activate=True)
            run = self._autolog_run
        tracker.log_cell(run, m, result.execution_count)
        if not tracker.config.quiet:
            print(m.summary(), file=sys.stdout)
        self._warn_backend(tracker)


def load(ip) -> EnergyMagics:
    """Register the magics, build the tracker, print the one-line sensor report."""
    try:
        magics = EnergyMagics(shell=ip)
    except ConfigError as exc:
        raise UsageError(f"ipython-energy configuration: {exc}") from None
    config = magics.build_config()
    for warning in magics.config_warnings:
        print(f"ipython-energy: {warning}", file=sys.stderr)
    from .sensors.base import SensorError
    if current() is None:
        try:
            set_tracker(new_tracker(config))
        except SensorError as exc:  # an explicitly requested sensor that cannot be used
            raise UsageError(f"ipython-energy: {exc}") from None
    ip.register_magics(magics)
    tracker = get_tracker()
    tracker.start_background()
    magics.set_session_hooks(True)
    if config.autolog:
        magics.set_autolog(True)
    print(load_report(tracker))
    for note in tracker.meter.notes + tracker.notes:
        print(f"ipython-energy: note: {note}", file=sys.stderr)
    return magics
