"""Running a sweep's points: one after another in this process, or each point a Ray task.

An executor takes the pending points and a function of one point, runs every point, calls `on_done` with
each `Outcome` as it finishes (in whatever order the points finish), and returns the outcomes in the
points' order. A point that raises is run once more (`RETRIES`); if it fails again, its outcome carries
the error and the other points still run. An `LlmpruneError` is not retried: it is the same every time
(a bad pattern for a matrix, no tokenizer) and its message says what to change.

`LocalExecutor` calls the function in this process (the model stays loaded between points).
`RayExecutor` ships the function once (it must be picklable) and runs each point as a Ray task with
`gpus_per_point` GPUs and `cpus_per_point` CPUs: on a local runtime it starts and stops itself, or on a
cluster it joins (`address="auto"`, `"host:6379"` or `"ray://host:10001"`). Ray is the optional extra `llmprune[cluster]`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import LlmpruneError

log = logging.getLogger(__name__)

RETRIES = 1
EXECUTORS = ("local", "ray")
LOCAL_OBJECT_STORE = 256 << 20  # points exchange configs and scores only: a small store starts faster


@dataclass
class Outcome:
    """What became of one point: its value, or the error of its last attempt."""

    index: int
    item: Any
    value: Any = None
    error: str | None = None    # "ExceptionType: first line of the message"
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


def describe(exc: BaseException) -> str:
    """One line for an exception; a Ray task error is reported as the worker's own exception."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__


def retryable(exc: BaseException) -> bool:
    return not isinstance(getattr(exc, "cause", None) or exc, LlmpruneError)


class LocalExecutor:
    """Every point in this process, in order; the default."""

    name = "local"
    remote = False  # the function may close over a loaded model

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, fn: Callable, items: Sequence, on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        outcomes = []
        for i, item in enumerate(items):
            attempt = 1
            while True:
                try:
                    outcome = Outcome(i, item, value=fn(item), attempts=attempt)
                    break
                except Exception as e:  # noqa: BLE001 - reported, not swallowed; KeyboardInterrupt still stops
                    if attempt > RETRIES or not retryable(e):
                        outcome = Outcome(i, item, error=describe(e), attempts=attempt)
                        break
                    log.warning("%s failed (%s); retrying once", item, describe(e))
                    attempt += 1
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
        return outcomes


def require_ray():
    """The `ray` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise LlmpruneError("--executor ray needs Ray, an optional extra: pip install 'llmprune[cluster]' "
                            "(or pip install 'ray[client]>=2.40').") from None
    return ray


def _call(fn: Callable, item):
    return fn(item)


class RayExecutor:
    """Each point a Ray task with `gpus_per_point` GPUs and `cpus_per_point` CPUs.

    With `address` None a local Ray runtime is started on first use and stopped on exit; with "auto",
    "host:6379" or "ray://host:10001" the executor joins that cluster (and only disconnects on exit). If Ray is already
    initialised in this process (a notebook, the tests), that runtime is used and left running.
    """

    name = "ray"
    remote = True  # the function travels to other processes: it must be picklable and load its own model

    def __init__(self, address: str | None = None, gpus_per_point: float = 0.0, cpus_per_point: float = 1.0):
        self.ray = require_ray()
        self.address, self.gpus, self.cpus = address, float(gpus_per_point), float(cpus_per_point)
        self.started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def _connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            if self.address is None and not os.environ.get("RAY_ADDRESS"):
                kwargs["object_store_memory"] = LOCAL_OBJECT_STORE
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise LlmpruneError(f"Cannot start or join Ray at {self.address or 'a local runtime'} ({describe(e)}); "
                                    "use --ray-address auto or HOST:6379 on a node of a running cluster, "
                                    "ray://HOST:10001 from elsewhere, or no --ray-address for a local runtime.") from None
            self.started = True
        have = ray.cluster_resources()
        for kind, need in (("GPU", self.gpus), ("CPU", self.cpus)):
            if need > have.get(kind, 0.0):
                flag = f"--{kind.lower()}s-per-point"
                msg = (f"{flag} {need:g} but the Ray cluster has {have.get(kind, 0.0):g} {kind}s in all: no point could "
                       f"ever be scheduled; lower {flag} or add nodes with {kind}s.")
                if self.address is None:
                    raise LlmpruneError(msg)
                log.warning("%s (an autoscaling cluster may still add them)", msg)

    def run(self, fn: Callable, items: Sequence, on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        if not items:
            return []
        self._connect()
        ray = self.ray
        task = ray.remote(_call)
        options = dict(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0, retry_exceptions=False)  # retries: ours
        fn_ref = ray.put(fn)  # shipped once; each task receives it by reference
        outcomes: list[Outcome | None] = [None] * len(items)
        running: dict = {}  # ObjectRef -> (index, attempt)

        def submit(i: int, attempt: int) -> None:
            running[task.options(name=f"llmprune {items[i]}", **options).remote(fn_ref, items[i])] = (i, attempt)

        for i in range(len(items)):
            submit(i, 1)
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                i, attempt = running.pop(ready[0])
                try:
                    outcome = Outcome(i, items[i], value=ray.get(ready[0]), attempts=attempt)
                except Exception as e:  # noqa: BLE001 - a task error or a lost worker/node: reported per point
                    if attempt <= RETRIES and retryable(e):
                        log.warning("%s failed (%s); retrying once", items[i], describe(e))
                        submit(i, attempt + 1)
                        continue
                    outcome = Outcome(i, items[i], error=describe(e), attempts=attempt)
                outcomes[i] = outcome
                if on_done:
                    on_done(outcome)
        except BaseException:  # interrupted (Ctrl-C) or on_done failed: stop the points still running
            for ref in running:
                ray.cancel(ref, force=True)
            raise
        return outcomes


def make_executor(name: str, address: str | None = None, gpus_per_point: float | None = None,
                  cpus_per_point: float | None = None, device: str = "cpu"):
    """The executor the sweep flags ask for, validated before any weights are loaded."""
    if name not in EXECUTORS:
        from ..errors import unknown

        raise unknown("executor", name, EXECUTORS)
    if name == "local":
        for flag, value in (("--ray-address", address), ("--gpus-per-point", gpus_per_point),
                            ("--cpus-per-point", cpus_per_point)):
            if value is not None:
                raise LlmpruneError(f"{flag} applies to --executor ray only (the local executor runs one point at a time "
                                    "in this process).")
        return LocalExecutor()
    cuda = device.startswith("cuda")
    gpus = gpus_per_point if gpus_per_point is not None else (1.0 if cuda else 0.0)
    cpus = cpus_per_point if cpus_per_point is not None else 1.0
    if gpus < 0 or cpus < 0:
        raise LlmpruneError(f"--gpus-per-point {gpus:g} / --cpus-per-point {cpus:g}: use numbers >= 0 (fractions share a device).")
    if cuda and device != "cuda":
        raise LlmpruneError(f"--device {device} with --executor ray: use --device cuda; Ray gives each point its own GPUs.")
    if cuda and gpus == 0:
        raise LlmpruneError("--device cuda with --gpus-per-point 0: a point needs at least a fraction of a GPU (e.g. 1 or 0.5).")
    if gpus > 0 and not cuda:
        raise LlmpruneError(f"--gpus-per-point {gpus:g} with --device {device}: add --device cuda to evaluate on the GPUs.")
    return RayExecutor(address, gpus, cpus)
