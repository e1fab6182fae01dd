"""The IPython surface: ``%%energy``, ``%energy`` and autolog.  Parsing, execution and display only."""

from __future__ import annotations

import ast
import logging
import shlex
import sys
import time
from types import MappingProxyType
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments

from .config import SETTING_NAMES, ConfigError, EnergySettings, suggest, unknown_variables
from .display import LiveReadout, journal_lines, load_report, status_text, summary_line
from .magic_args import CellArgs, Once, checked_name, parse_count, parse_params, parse_repeat, parse_words
from .runtime import current, get_tracker, new_tracker, set_tracker
from .runs import EnergyError, Run
from .tracking import Tracker
from .validate import check_units, parse_energy, quote, status_for

log = logging.getLogger("ipython_energy")


#: Distinct ``%%energy`` lines whose parse is kept (a notebook has a handful; a sweep generated
#: with ``--param lr={lr}`` has one per value).  Past this the oldest entry is dropped.
CELL_ARGS_CACHED = 256


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
    @argument("-o", "--output", metavar="NAME", action=Once, help="Store the Measurement in the user namespace as NAME.")
    @argument("--run", metavar="NAME", action=Once, help="Measure the cell as (part of) run NAME; a new run ends with the cell.")
    @argument("--sweep", metavar="NAME", action=Once, help="The run belongs to sweep NAME (started or joined; stays active).")
    @argument("--param", metavar="KEY=VALUE", action="append", default=[],
              help="A parameter of the run, logged as an MLflow param. Repeatable.")
    @argument("--units", metavar="N", action=Once, help="Units of work done by the cell, for joules per unit.")
    @argument("--unit", metavar="WORD", action=Once, help="What --units counts (samples, tokens, images…); default samples.")
    @argument("--quiet", action="store_true", help="Print no summary line.")
    @argument("--no-log", action="store_true", help="Measure and print, but log nothing to MLflow.")
    @argument("--live", action="store_true",
              help="Show a live readout under the running cell (power, joules so far, elapsed), every second.")
    @argument("--repeat", metavar="N", action=Once,
              help="Run the cell N times, each its own run, as one group with mean, sd and 95 %% CI.")
    @argument("--warmup", metavar="K", action=Once,
              help="With --repeat: K warm-up runs first (measured and logged, left out of the statistics).")
    @argument("--cooldown", metavar="30s|auto", action=Once,
              help="With --repeat: wait before each run, a fixed time or until the GPUs (else the power) "
                   "are back near idle.")
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
        if args.repeat is not None:
            return self._repeat_cell(args, cell)
        params, run_name, sweep_name, units = args.params, args.run, args.sweep, args.units
        tracker = get_tracker()
        count = self.shell.execution_count
        try:  # which run the cell belongs to; everything is checked before the cell runs
            scope = tracker.begin_cell(f"In [{count}]", run_name=run_name, sweep_name=sweep_name, params=params,
                                       units=units, log=tracker.config.log and not args.no_log)
        except (EnergyError, ValueError) as exc:
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
        a = parse_words(self.energy.parser, words)
        if a.output is not None and not a.output.isidentifier():
            raise UsageError(f"-o takes a Python name, not {quote(a.output)}")
        params = parse_params(a.param)
        run_name = checked_name(a.run, "run")
        sweep_name = checked_name(a.sweep, "sweep")
        units: tuple[float, str] | None = None
        if a.units is not None:
            n = parse_count(a.units, "--units")
            try:  # an empty --unit '' is an error (check_units), not the default
                units = check_units(n, "samples" if a.unit is None else a.unit)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        elif a.unit is not None:
            raise UsageError("--unit names what --units counts; give --units N too")
        args = CellArgs(a.output, run_name, sweep_name, MappingProxyType(params), units,
                        bool(a.quiet), bool(a.no_log), bool(a.live), *parse_repeat(a))
        cache = self._cell_args
        if len(cache) >= CELL_ARGS_CACHED:
            del cache[next(iter(cache))]
        cache[line] = args
        return args

    def _repeat_cell(self, args: CellArgs, cell: str) -> Any:
        """``%%energy --repeat N``: the cell's warm-ups and repeats as one group; one summary line.

        ``--run`` names the group (default ``In [n]``), each repeat ``<name> #i``; ``--sweep``,
        ``--param``, ``--units`` and ``--no-log`` apply to every run; ``-o`` stores the Group.
        Returns the last run's value of the cell's last expression.
        """
        __tracebackhide__ = True
        from .repeats import run_groups

        tracker = get_tracker()
        log_on = tracker.config.log and not args.no_log
        name = args.run or f"In [{self.shell.execution_count}]"
        groups: dict = {}
        try:
            try:
                if args.sweep:
                    tracker.start_sweep(args.sweep, log=log_on)
                _, result = run_groups(tracker, {name: lambda: self._execute(cell)}, n=args.repeat,
                                       warmups=args.warmup, order="sequential", cooldown=args.cooldown,
                                       params=args.params, units=args.units, log=log_on, groups=groups)
            except EnergyError as exc:  # the cell's own exceptions propagate unchanged
                raise UsageError(str(exc)) from None
            return result
        finally:
            group = groups.get(name)
            if group is not None:
                if args.output:
                    self.shell.user_ns[args.output] = group
                if not (args.quiet or tracker.config.quiet):
                    extra = [tracker.sweep.describe()] if tracker.sweep is not None else []
                    if not log_on:
                        extra.append("not logged")
                    print("ipython-energy: " + " · ".join([str(group), *extra]))
            self._warn_backend(tracker)

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
        self._print_notices(tracker)

    @staticmethod
    def _print_notices(tracker: Tracker) -> None:
        """Notes the writer's threads made (old journals: skipped lines, losses, a URI not answering), each once."""
        writer = getattr(tracker, "_writer", None)  # asking must not start a writer
        if writer is not None:
            for text in writer.take_notices():
                print(text, file=sys.stderr)

    # ---- %energy ----------------------------------------------------------------------------
    @line_magic("energy")
    def energy_line(self, line: str):
        """Control energy tracking.

        Usage::

            %energy                                   status: sensors, power now, active run and sweep
            %energy sweep NAME|RUN_ID [--planned N] [--budget 5kJ] [--stop-at-budget]  start or join
            %energy run NAME [--param KEY=VALUE ...]  start a run; later cells belong to it
            %energy end [run|sweep]                   end the active run (or, with none, the sweep)
            %energy autolog on|off                    measure every cell as a cell of the active run
            %energy chart [NAME] [--mlflow] [--by host]  the sweep's chart, inline (every host's runs
                                                    with --mlflow, or when other processes joined)
            %energy flush [--timeout 30]              wait until MLflow has every measurement
            %energy compare A B [--log]               b against a: ratio, 95 % CI, comparability
            %energy spool                             earlier sessions' journals not yet in MLflow
            %energy spool deliver SESSION|all         write them to this session's MLflow instead
            %energy spool discard SESSION|all         set them aside in spool/discarded/
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
            raise UsageError(f"%energy: unknown command {quote(command)}; use one of: sweep, run, end, autolog, "
                             "chart, flush, compare, spool (or %energy alone for the status)")
        return handler(rest)

    @staticmethod
    def _parser(prog: str) -> MagicArgumentParser:
        return MagicArgumentParser(prog=f"%energy {prog}", add_help=False)

    def _cmd_sweep(self, words: list[str]):
        p = self._parser("sweep")
        p.add_argument("name")
        p.add_argument("--planned", type=str, action=Once)
        p.add_argument("--budget", type=str, action=Once)
        p.add_argument("--stop-at-budget", action="store_true")
        a = parse_words(p, words)
        planned = None
        if a.planned is not None:
            try:
                planned = int(a.planned)
            except ValueError:
                raise UsageError(f"--planned takes a whole number of runs, not {quote(a.planned)}") from None
        budget = None
        if a.budget is not None:
            try:
                budget = parse_energy(a.budget)
            except ValueError as exc:
                raise UsageError(f"--budget: {exc}") from None
        if a.stop_at_budget and budget is None:
            raise UsageError("--stop-at-budget needs --budget")
        try:
            sweep = self.tracker.start_sweep(checked_name(a.name, "sweep"), planned=planned, budget_j=budget,
                                             stop_at_budget=a.stop_at_budget)
        except (ValueError, EnergyError) as exc:
            raise UsageError(str(exc)) from None
        print(f"ipython-energy: {sweep.describe()} — runs started now belong to it")

    def _cmd_run(self, words: list[str]):
        p = self._parser("run")
        p.add_argument("name")
        p.add_argument("--param", action="append", default=[])
        a = parse_words(p, words)
        params = parse_params(a.param)
        try:
            run = self.tracker.start_run(checked_name(a.name, "run"), params, activate=True)
        except (ValueError, EnergyError) as exc:
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
        p.add_argument("--timeout", type=str, default="30", action=Once)
        a = parse_words(p, words)
        timeout = parse_count(a.timeout, "--timeout")
        tracker = self.tracker
        ok = tracker.flush(timeout)
        writer = getattr(tracker, "_writer", None)
        old = [(j, state) for j, state in self._journals(tracker) if j.events or j.lost]
        if ok:
            text = ("ipython-energy: MLflow has every measurement" if not old else
                    "ipython-energy: MLflow has every measurement of this session")
        else:
            st = writer.status() if writer is not None else None
            held = writer.held_in_memory if writer is not None else 0
            text = (f"ipython-energy: not everything reached MLflow within {timeout:g} s: "
                    f"{st.pending if st else 0} event(s) of this session are still pending")
            text += (f", {held} of them held in memory only (the spool cannot be written)" if held
                     else "; they stay in the spool")
        if old:
            text += (f"; {sum(j.events for j, _ in old)} event(s) of {len(old)} earlier session(s) still wait "
                     "(%energy spool deliver|discard SESSION|all):\n" + "\n".join(f"  {line}" for line in journal_lines(old)))
        print(text)
        self._print_notices(tracker)

    # ---- %energy spool ----------------------------------------------------------------------
    @staticmethod
    def _spool_place(tracker: Tracker):
        """(the spool folder, this session's id, the writer or None)."""
        from .paths import home

        writer = tracker.writer if tracker.config.log else getattr(tracker, "_writer", None)
        spool = writer.spool if writer is not None else None
        if spool is not None:
            return spool.directory, spool.session, writer
        return home() / "spool", tracker.session, writer

    def _journals(self, tracker: Tracker) -> list:
        """Earlier sessions' journals no live kernel holds, as ``(Journal, state)`` pairs."""
        from .recovery import journals

        directory, own, writer = self._spool_place(tracker)
        out = []
        for journal, held in journals(directory, own):
            replaying = writer is not None and writer.replaying == journal.session
            if held and not replaying:
                continue  # another live kernel's: it writes it itself
            out.append((journal, _journal_state(writer, journal.session, replaying)))
        return out

    def _cmd_spool(self, words: list[str]):
        usage = "%energy spool takes nothing, 'deliver SESSION|all' or 'discard SESSION|all'"
        if not words:
            return self._spool_list()
        if len(words) != 2 or words[0] not in ("deliver", "discard"):
            raise UsageError(usage)
        from . import recovery

        action, name = words
        tracker = self.tracker
        directory, own, writer = self._spool_place(tracker)
        if name == own:
            raise UsageError(f"%energy spool {action}: {name} is this session's own journal; "
                             "it is written by this session's writer (%energy flush)")
        if action == "deliver" and (not tracker.config.log or writer is None):
            raise UsageError("%energy spool deliver: logging to MLflow is off in this session")
        if name == "all":
            sessions = [j.session for j, _state in self._journals(tracker)]
            if not sessions:
                print(f"ipython-energy: no earlier session's journal in {directory}")
                return
        else:
            known = [j.session for j, _held in recovery.journals(directory, own)]
            if name not in known:
                raise UsageError(f"%energy spool {action}: no journal of session {name!r} in {directory} "
                                 f"(known: {', '.join(known) or 'none'}; %energy spool lists them)")
            sessions = [name]
        done = []
        for session in sessions:
            try:
                if action == "discard":
                    journal, path = recovery.discard(directory, session)
                    if writer is not None:
                        writer.old_waiting.pop(session, None)
                    print(f"ipython-energy: set aside the journal of session {session} ({journal.describe()}) "
                          f"in {path}; it is not replayed (move it back into {directory} to replay it)")
                else:
                    journal = recovery.retarget(directory, session, tracker.tracking_uri, tracker.config.experiment)
                    writer.old_waiting.pop(session, None)
                    done.append(journal)
            except recovery.Busy:
                print(f"ipython-energy: the journal of session {session} is held by a running kernel; left as it is",
                      file=sys.stderr)
        if done:
            writer.recover_now(60.0)
            for journal in done:
                if journal.path.exists():
                    uri, why = writer.old_waiting.get(journal.session, (tracker.tracking_uri, "not replayed yet"))
                    print(f"ipython-energy: the journal of session {journal.session} now goes to MLflow at "
                          f"{tracker.tracking_uri}, experiment {tracker.config.experiment!r}; not written yet "
                          f"({why}); it is tried again every {writer.recovery_every_s:g} s", file=sys.stderr)
                else:
                    print(f"ipython-energy: delivered the journal of session {journal.session} to MLflow at "
                          f"{tracker.tracking_uri}, experiment {tracker.config.experiment!r}: {journal.events} "
                          f"event(s), {journal.runs} run(s), {_energy(journal.energy_j)}")
        self._print_notices(tracker)

    def _spool_list(self) -> None:
        tracker = self.tracker
        directory, own, writer = self._spool_place(tracker)
        lines = [f"ipython-energy spool: {directory}"]
        if writer is not None:
            st = writer.status()
            held = writer.held_in_memory
            lines.append(f"  this session {own}: {st.pending} event(s) not yet in MLflow"
                         + (f", {held} held in memory only" if held else ""))
        from .recovery import journals

        others = journals(directory, own)
        for journal, held in others:
            replaying = writer is not None and writer.replaying == journal.session
            state = _journal_state(writer, journal.session, replaying) if replaying or not held \
                else "in use by a running kernel"
            lines.extend(f"  {line}" for line in journal_lines([(journal, state)]))
        if not others:
            lines.append("  no earlier session's journal")
        for folder, what in (("rejected", "events MLflow refused, lines replay could not read"),
                             ("discarded", "journals set aside with %energy spool discard")):
            files = sorted((directory / folder).glob("*.jsonl")) if (directory / folder).is_dir() else []
            if files:
                lines.append(f"  {directory / folder}: {len(files)} file(s) ({what})")
        print("\n".join(lines))
        self._print_notices(tracker)

    def _cmd_chart(self, words: list[str]):
        p = self._parser("chart")
        p.add_argument("names", nargs="*")
        p.add_argument("--mlflow", action="store_true")
        p.add_argument("--by", choices=("status", "host"), action=Once)
        a = parse_words(p, words)
        if len(a.names) > 1:
            raise UsageError("%energy chart takes at most one sweep name")
        a.name = a.names[0] if a.names else None
        tracker = self.tracker
        if a.name is not None:
            sweep = tracker.sweeps.get(a.name)
        else:
            sweep = tracker.sweep or (list(tracker.sweeps.values())[-1] if tracker.sweeps else None)
            if sweep is None:
                raise UsageError("%energy chart: no sweep yet; start one with %energy sweep NAME, "
                                 "or name a sweep in MLflow")
        from .charts import sweep_chart

        color_by = a.by or "auto"
        per_host = "auto" if a.by is None else a.by == "host"
        view = tracker.sweep_view(sweep) if sweep is not None else None
        if sweep is not None and not a.mlflow and (view is None or view.processes <= 1):
            from .runs import sweep_data

            return sweep_chart(sweep_data(sweep), color_by=color_by, per_host=per_host)
        # The whole sweep, every process on every host, as MLflow has it: this session's
        # measurements first (the wait %energy compare makes too).
        if not tracker.flush(30):
            print("ipython-energy: some measurements are still on their way to MLflow; "
                  "the chart shows what MLflow has now", file=sys.stderr)
        from .query import whole_sweep

        experiment = (sweep.experiment if sweep is not None else None) or tracker.config.experiment
        try:
            data = whole_sweep(tracker.tracking_uri, experiment, sweep.name if sweep is not None else a.name)
        except LookupError as exc:
            known = f" (in this session: {', '.join(map(quote, tracker.sweeps))})" if tracker.sweeps else ""
            raise UsageError(f"%energy chart: {exc}{known}") from None
        return sweep_chart(data, color_by=color_by, per_host=per_host)

    def _cmd_compare(self, words: list[str]):
        parser = self._parser("compare")
        parser.add_argument("a", help="run id, or name of a group, sweep or run")
        parser.add_argument("b")
        parser.add_argument("--log", action="store_true", help="record the comparison as an MLflow run")
        args = parser.parse_args(words)
        tracker = self.tracker
        if not tracker.flush(30):
            print("ipython-energy: some measurements are still on their way to MLflow; "
                  "the comparison uses what MLflow has now", file=sys.stderr)
        from .comparison import compare

        try:
            result = compare(args.a, args.b, tracking_uri=tracker.tracking_uri, experiment=tracker.config.experiment)
        except (LookupError, ValueError, TypeError) as exc:
            raise UsageError(f"%energy compare: {exc}") from None
        if args.log:
            print(f"ipython-energy: comparison logged as MLflow run {result.log(tracker.tracking_uri, tracker.config.experiment)}")
        return result

    def _status(self) -> None:
        tracker = self.tracker
        journals = self._journals(tracker) if getattr(tracker, "_writer", None) is not None else []
        print(status_text(tracker, journals=[(j, state) for j, state in journals if j.events or j.lost]))
        self._print_notices(tracker)

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


def _energy(joules: float) -> str:
    from .measurement import format_energy

    return format_energy(joules)


def _journal_state(writer, session: str, replaying: bool) -> str:
    """What becomes of an earlier session's journal, in words."""
    if replaying:
        return "being replayed now"
    waiting = writer.old_waiting.get(session) if writer is not None else None
    if waiting is not None:
        uri, why = waiting
        return f"waiting: MLflow at {uri} is not answering ({why})"
    return "replayed by the next recovery pass (every 30 s)"


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
    # Sensors that were looked for and not found (no NVML, no RAPL on a laptop) are not errors: the
    # load line says what is measured and how, and `%energy` lists the notes (a sensor asked for by
    # name that cannot be used raised above).
    for note in tracker.meter.notes + tracker.notes:
        log.info("ipython-energy: note: %s", note)
    return magics
