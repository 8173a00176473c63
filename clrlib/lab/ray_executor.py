"""Runs on a Ray cluster: an :class:`~clrlib.lab.runs.Executor` that makes each missing run a Ray task.

:class:`RayExecutor` connects to a cluster (``address``, else ``$RAY_ADDRESS``, else a new local
one), puts each data set into Ray's object store once, and submits one task per spec: one GPU
each where the cluster has GPUs, else one CPU. The driver (this process) keeps the run store:
each finished history is handed to ``done`` as soon as it arrives, so the nodes need no shared
file system and an interrupted sweep resumes from the store. A run that fails is retried
``max_retries`` times; the runs that still fail are reported together, with their specs, once
the others are finished and stored.

Each run is a task with its resources: ``num_gpus_per_run`` GPUs (a fraction packs several runs
on one GPU) or, on a cluster without GPUs, ``num_cpus_per_run`` CPUs. A run's record says that
Ray made it (``executor: "ray"``), on which host and in which worker process (``pid``).

A local cluster is started with :func:`init_ray`, which allows a slow or busy machine the time
it needs: longer start-up timeouts (:data:`STARTUP_ENV`), the agents' ports chosen up front (the
raylet otherwise waits at most 15 s, a fixed time, for each agent to report its port, and aborts:
ray-project/ray#65983, which is what "The current node timed out during startup" was on a busy
2-core machine), and another try when the node still timed out.

Ray is optional (``pip install 'clrlib[ray]'``): nothing else in clrlib imports this module,
and this module imports Ray only when an executor is made.

Example (not run by the doctests: it starts Ray)::

    from clrlib.lab.runs import Lab
    from clrlib.lab.ray_executor import RayExecutor
    lab = Lab("results/full/runs", device="cuda", executor=RayExecutor(log=print))
    histories = lab.fit_many(specs)          # one Ray task per missing spec
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any, Callable, Sequence

from .runs import Lab, RunFailed, execute, failures_error

__all__ = ["RayExecutor", "import_ray", "init_ray", "STARTUP_ENV"]

INSTALL_HINT = "pip install 'clrlib[ray]'"

#: Start-up timeouts raised for a slow or loaded machine (Ray's defaults are 10 to 60 s; on two
#: busy cores a node's processes took longer and ``ray.init`` failed with "The current node
#: timed out during startup"). Set where the variable is unset, before Ray starts its processes.
STARTUP_ENV = {
    "RAY_raylet_start_wait_time_s": "120",          # raylet registering with the GCS
    "RAY_gcs_server_request_timeout_seconds": "120",
    "RAY_gcs_rpc_server_connect_timeout_s": "120",
    "RAY_py_gcs_connect_timeout_s": "120",
    "RAY_agent_register_timeout_ms": "120000",      # the dashboard/runtime-env agents
    "RAY_worker_register_timeout_seconds": "600",   # a worker process importing torch on starved cores
    "RAY_USAGE_STATS_ENABLED": "0",                 # no network call at start
}


def import_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"RayExecutor needs Ray, which is not installed: {INSTALL_HINT} "
                          f"(or pip install ray)") from e
    return ray


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on this machine now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


@contextlib.contextmanager
def _agent_ports_chosen_up_front(ray):
    """While a local node starts: its agents' ports picked here rather than reported by the agents
    through port files, which the raylet waits for only 15 s (ray-project/ray#65983). Where this
    Ray's parameters differ (another version), nothing is changed."""
    params = getattr(getattr(getattr(ray, "_private", None), "parameter", None), "RayParams", None)
    names = ("metrics_agent_port", "dashboard_agent_listen_port", "runtime_env_agent_port")
    original = getattr(params, "__init__", None)
    if original is None or not all(n in original.__code__.co_varnames for n in names):
        yield
        return
    ports = dict(zip(names, _free_ports(len(names))))

    def init(self, *args, **kwargs):
        for name, port in ports.items():
            if kwargs.get(name) is None:
                kwargs[name] = port
        original(self, *args, **kwargs)

    params.__init__ = init
    try:
        yield
    finally:
        params.__init__ = original


def init_ray(address: str | None = None, attempts: int = 3, **options):
    """``ray.init(address, **options)`` that survives a slow start (see the module's docstring):
    the timeouts of :data:`STARTUP_ENV` (where unset), a new local node's agent ports chosen up
    front, and up to ``attempts`` tries when a new local node still timed out during start-up.
    Returns the ``ray`` module; nothing is done if Ray is initialised in this process."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    for name, value in STARTUP_ENV.items():
        os.environ.setdefault(name, value)
    options.setdefault("include_dashboard", False)
    options.setdefault("ignore_reinit_error", True)
    for attempt in range(1, attempts + 1):
        try:
            local = not (address or os.environ.get("RAY_ADDRESS"))
            with _agent_ports_chosen_up_front(ray) if local else contextlib.nullcontext():
                ray.init(address=address or None, **options)
            return ray
        except Exception as e:  # Ray raises a bare Exception for this
            slow = "timed out" in str(e).lower()
            try:
                ray.shutdown()
            except Exception:
                pass
            if address or not slow or attempt == attempts:
                raise
            time.sleep(2 * attempt)
    return ray


def _set_threads(threads: int) -> None:
    import torch
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _execute_in_worker(spec, arrays, device: str, compile, progress: bool, threads: int):
    """One run inside a Ray worker (``arrays`` arrive from the object store)."""
    _set_threads(threads)
    return execute(spec, arrays, device, compile, progress)


def _call_in_worker(task: Callable, spec, threads: int):
    """Any other executor task, shipped whole (cloudpickle), inside a Ray worker."""
    _set_threads(threads)
    return task(spec)


class RayExecutor:
    """Makes runs as Ray tasks, one per spec, and stores them in the driver as they finish.

    Args:
        address: the cluster (``"host:6379"``, ``"ray://host:10001"``, ``"auto"``); default
            ``$RAY_ADDRESS``, else a new local cluster. Ignored when Ray is already initialised
            in this process.
        num_gpus_per_run: GPUs each run asks for (a fraction packs several runs on a GPU);
            default 1 where the cluster has GPUs, else 0 (runs on the CPU).
        max_retries: how many times a failed run is tried again: Ray resubmits it after its
            worker died, and this executor resubmits it after it raised.
        log: called with a line per finished run (done / in flight / waiting), or None.
        num_cpus_per_run: CPUs each run asks for; it is also torch's thread count inside the
            run, so that a run gives the same numbers wherever it lands (and the same as a
            local run with as many threads).
        max_in_flight: at most this many runs submitted at once (the rest wait in the driver);
            default: all of them, and Ray queues what the cluster cannot start yet (which is
            what lets an autoscaling cluster grow).

    Raises:
        ImportError: Ray is not installed.
    """

    def __init__(self, address: str | None = None, num_gpus_per_run: float | None = None,
                 max_retries: int = 1, log: Callable[[str], None] | None = None, *,
                 num_cpus_per_run: int = 1, max_in_flight: int | None = None) -> None:
        self._ray = import_ray()
        if num_gpus_per_run is not None and num_gpus_per_run < 0:
            raise ValueError(f"num_gpus_per_run must be >= 0, got {num_gpus_per_run!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not (isinstance(num_cpus_per_run, int) and num_cpus_per_run >= 1):
            raise ValueError(f"num_cpus_per_run must be an integer >= 1, got {num_cpus_per_run!r}")
        if max_in_flight is not None and not (isinstance(max_in_flight, int) and max_in_flight >= 1):
            raise ValueError(f"max_in_flight must be an integer >= 1 or None, got {max_in_flight!r}")
        self.address = address
        self.num_gpus_per_run = num_gpus_per_run
        self.max_retries = max_retries
        self.log = log
        self.num_cpus_per_run = num_cpus_per_run
        self.max_in_flight = max_in_flight
        self._data_refs: dict[str, Any] = {}  # data fingerprint -> ObjectRef, one put per data set
        self._remote: dict[str, Any] = {}
        self._job: str | None = None

    name = "ray"

    @property
    def tries(self) -> int:
        return 1 + self.max_retries

    def __repr__(self) -> str:
        return (f"RayExecutor(address={self.address!r}, num_gpus_per_run={self.num_gpus_per_run!r}, "
                f"max_retries={self.max_retries})")

    # -- the cluster -------------------------------------------------------------------------

    def connect(self) -> None:
        """Join the cluster (or start a local one) unless this process already has."""
        ray = self._ray
        if not ray.is_initialized():
            init_ray(self.address or os.environ.get("RAY_ADDRESS") or None)
        job = ray.get_runtime_context().get_job_id()
        if job != self._job:  # objects put under another connection are gone
            self._data_refs.clear()
            self._job = job

    def gpus_per_run(self) -> float:
        """The GPUs each run asks for: ``num_gpus_per_run``, else 1 on a cluster with GPUs, else 0."""
        if self.num_gpus_per_run is not None:
            return self.num_gpus_per_run
        return 1 if self._ray.cluster_resources().get("GPU", 0) > 0 else 0

    def slots(self, num_gpus: float) -> int:
        """How many runs the cluster can run at once with these resources (at least 1)."""
        resources = self._ray.cluster_resources()
        cpus = int(resources.get("CPU", 1) // self.num_cpus_per_run)
        if num_gpus > 0:
            cpus = min(cpus, int(resources.get("GPU", 0) // num_gpus + 1e-9))
        return max(1, cpus)

    def _remote_fn(self, fn: Callable, num_gpus: float):
        if fn.__name__ not in self._remote:
            self._remote[fn.__name__] = self._ray.remote(fn)
        return self._remote[fn.__name__].options(num_cpus=self.num_cpus_per_run, num_gpus=num_gpus,
                                                 max_retries=self.max_retries, retry_exceptions=False)

    def _arrays_ref(self, lab: Lab, data):
        key = data.fingerprint or repr(data)
        if key not in self._data_refs:
            self._data_refs[key] = self._ray.put(lab.arrays(data))
        return self._data_refs[key]

    # -- the Executor protocol ---------------------------------------------------------------

    def run(self, task: Callable, specs: Sequence, done: Callable[[Any, Any], None],
            admit: Callable[[Any], bool] | None = None, failed: Callable[[Any, BaseException], None] | None = None
            ) -> None:
        """Run ``task(spec)`` for each spec on the cluster, calling ``done`` in this process.

        When ``task`` is a :class:`~clrlib.lab.runs.Lab`'s own task, the runs call
        :func:`~clrlib.lab.runs.execute` with the Lab's data (put into the object store once per
        data set), compile and progress settings; any other task is shipped whole.
        ``admit(spec)`` is asked in this process just before a spec is submitted (False: not
        started); with it, at most as many runs as the cluster can run at once are submitted
        (see :meth:`slots`), so that a run is admitted when it can start. ``failed(spec, error)``
        is called as a run's failure is final (its retries spent).
        """
        specs = list(specs)
        if not specs:
            return
        self.connect()
        num_gpus = self.gpus_per_run()
        device = "cuda" if num_gpus > 0 else "cpu"
        lab = getattr(task, "__self__", None)
        if isinstance(lab, Lab) and getattr(task, "__func__", None) is Lab._task:
            if lab.device.type != device and self.log:
                self.log(f"ray: runs go to {device} workers, but the Lab binds specs for {lab.device} "
                         f"(precision, store keys); give the Lab device={device!r} to match")
            remote = self._remote_fn(_execute_in_worker, num_gpus)

            def submit(spec):
                return remote.remote(spec, self._arrays_ref(lab, spec.data), device, lab.compile,
                                     lab.progress, self.num_cpus_per_run)
        else:
            remote, task_ref = self._remote_fn(_call_in_worker, num_gpus), self._ray.put(task)

            def submit(spec):
                return remote.remote(task_ref, spec, self.num_cpus_per_run)

        in_flight = self.max_in_flight
        if admit is not None and in_flight is None:
            in_flight = self.slots(num_gpus)
        self._run(submit, specs, done, admit, in_flight, failed)

    def _run(self, submit: Callable, specs: list, done: Callable, admit=None, in_flight=None, failed=None) -> None:
        ray = self._ray
        waiting = list(reversed(specs))  # popped from the end: submitted in the given order
        pending: dict[Any, Any] = {}     # ObjectRef -> spec
        attempts = {spec: 0 for spec in specs}
        failures: list[tuple[Any, BaseException]] = []
        finished, started = 0, time.time()
        try:
            while waiting or pending:
                while waiting and (in_flight is None or len(pending) < in_flight):
                    spec = waiting.pop()
                    if attempts[spec] == 0 and admit is not None and not admit(spec):
                        continue
                    attempts[spec] += 1
                    pending[submit(spec)] = spec
                if not pending:
                    break
                [ref], _ = ray.wait(list(pending), num_returns=1)
                spec = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the run raised: try it again
                    if attempts[spec] <= self.max_retries:
                        waiting.append(spec)
                        self._say(f"ray: {_error_text(spec, _cause(e))}; trying it again")
                    else:
                        failures.append((spec, _cause(e)))
                        failed and failed(spec, _cause(e))
                    continue
                except ray.exceptions.RayError as e:  # its worker or node died (after Ray's retries)
                    failures.append((spec, e))
                    failed and failed(spec, e)
                    continue
                done(spec, result)
                finished += 1
                self._say(f"ray: {finished}/{len(specs)} runs done, {len(pending)} in flight, "
                          f"{len(waiting)} waiting" + (f", {len(failures)} failed" if failures else "")
                          + f" ({time.time() - started:.0f} s)")
        except BaseException:
            for ref in pending:  # interrupted, or done() raised: stop the runs still going
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            raise
        if failures:
            raise failures_error(failures, len(specs), self.tries)

    def _say(self, line: str) -> None:
        if self.log:
            self.log(line)


def _name(spec) -> str:
    try:
        return f"{spec.kind}-{spec.key()}"
    except Exception:
        return repr(spec)


def _cause(error: BaseException) -> BaseException:
    """The exception the task raised (Ray's wrapper otherwise, e.g. for an unpicklable one)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def _error_text(spec, error: BaseException) -> str:
    """``error`` in a line: a RunFailed from execute already names the run, so it is shown as is."""
    text = str(error).split("; spec: ")[0]
    if isinstance(error, RunFailed) and text.startswith(f"run {_name(spec)}"):
        return text
    first = text.splitlines()[0] if text else ""
    return f"run {_name(spec)} failed ({type(error).__name__}: {first})"
