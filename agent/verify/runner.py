"""Verify configured directories: open each machine's helpers once, compare every directory,
and never let one directory's failure stop the others."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack

from ..config import AgentConfig, DirectoryConfig
from ..errors import AgentError, StateError, TargetError
from ..model import DirCounts, DirResult
from .cache import HashCache
from .cancel import Cancel
from .channel import Channel, Pool, default_workers
from .engine import Engine
from .plan import DirPlan, plan_directories
from .report import ProgressSink, ReportSink
from .targets import ALGORITHMS, TargetSpec, open_pool, spawn_local

log = logging.getLogger(__name__)


class _Pools:
    """Helper pools for one run: one per target machine, and source pools per algorithm."""

    def __init__(self, config: AgentConfig, stack: ExitStack, cancel: Cancel):
        self.config = config
        self.stack = stack
        self.cancel = cancel  # ends the helpers on a stop, through these pools
        self.workers = config.limits.workers or default_workers()
        self.read_limit = int(config.limits.read_mb_per_s * 1_000_000)
        self._targets: dict[str, Pool] = {}
        self._sources: dict[str, Pool] = {}
        # A machine that could not be reached is not dialled again for each of its
        # directories in the same run: they all get the first attempt's error at once.
        self._unreachable: dict[str, TargetError] = {}
        self._spare: list[Channel] = []  # source helpers started ahead of their pool

    def prepare_source(self) -> None:
        """Start the source helpers now, so they boot while the target's are greeted."""
        if self._sources or self._spare:
            return
        self._spare = spawn_local(self.workers)
        self.cancel.adopt(self._spare)
        self.stack.callback(self._close_spare)

    def hang_up(self) -> None:
        """Tell every helper the run is over; closing the pools then only reaps them."""
        for pool in [*self._targets.values(), *self._sources.values()]:
            for channel in pool.channels:
                channel.hang_up()

    def _close_spare(self) -> None:
        for channel in self._spare:
            channel.close()

    def _open(
        self, spec: TargetSpec, algorithms: tuple[str, ...], started: list[Channel] | None = None
    ) -> Pool:
        pool = open_pool(
            spec,
            ssh=self.config.ssh,
            workers=self.workers,
            algorithms=algorithms,
            read_limit=self.read_limit,
            started=started,
        )
        self.stack.callback(pool.close)
        self.cancel.adopt(pool.channels)
        if spec.host is not None:
            if pool.algorithm != ALGORITHMS[0]:
                log.warning(
                    "%s: no xxh3 there (no xxhash module, libxxhash or xxh128sum): both sides hash "
                    "with %s (%s) for this target",
                    spec.key, pool.algorithm, pool.via,
                )  # fmt: skip
            else:
                log.info("%s: hashing with %s (%s)", spec.key, pool.algorithm, pool.via)
        return pool

    def target(self, spec: TargetSpec) -> Pool:
        failed = self._unreachable.get(spec.key)
        if failed is not None:
            raise failed
        pool = self._targets.get(spec.key)
        if pool is None or not pool.alive:
            try:
                pool = self._targets[spec.key] = self._open(spec, ALGORITHMS)
            except TargetError as exc:
                self._unreachable[spec.key] = exc
                raise
        return pool

    def source(self, algorithm: str) -> Pool:
        pool = self._sources.get(algorithm)
        if pool is None or not pool.alive:
            started, self._spare = self._spare, []
            pool = self._open(TargetSpec(path=b"/"), (algorithm,), started)
            self._sources[algorithm] = pool
        return pool


def open_cache(config: AgentConfig, use_cache: bool) -> HashCache | None:
    if not (use_cache and config.cache.enabled):
        return None
    try:
        return HashCache(config.state_dir, max_entries=config.cache.max_entries)
    except StateError as exc:
        log.warning("running without the hash cache: %s", exc)
        return None


def run_verification(
    config: AgentConfig,
    directories: Sequence[DirectoryConfig],
    *,
    use_cache: bool = True,
    stop: Cancel | None = None,
    report: ReportSink | None = None,
    progress: ProgressSink | None = None,
) -> list[DirResult]:
    """One DirResult per directory, in order; a failed directory carries its `error`.
    `stop` ends the run: set, between requests; terminated, its helpers at once."""
    plans = plan_directories(config, directories)  # before any helper starts
    stop = stop or Cancel()
    results: list[DirResult] = []
    with ExitStack() as stack:
        # Quick mode reads no file, so it has no digest to look up or to keep.
        cache = open_cache(config, use_cache and config.verify_mode == "content")
        if cache is not None:
            stack.callback(cache.close)
        pools = _Pools(config, stack, stop)
        for plan in plans:
            results.append(_verify_one(plan, pools, cache, stop, report, progress))
        if cache is not None:
            cache.prune()
        # The helpers exit while the cache is written out (and each other), not one by one.
        pools.hang_up()
        if cache is not None:
            cache.close()
    return results


def _verify_one(
    plan: DirPlan,
    pools: _Pools,
    cache: HashCache | None,
    stop: Cancel,
    report: ReportSink | None,
    progress: ProgressSink | None,
) -> DirResult:
    started = time.monotonic()
    try:
        pools.prepare_source()
        target_pool = pools.target(plan.target)
        source_pool = pools.source(target_pool.algorithm)
    except AgentError as exc:
        log.error("%s: %s", plan.dir_check, exc)
        return DirResult(
            dir_check=plan.dir_check,
            target=plan.target_text,
            counts=DirCounts(),
            elapsed=time.monotonic() - started,
            hash_algorithm="",
            error=str(exc),
        )
    engine = Engine(
        source_pool, target_pool, cache=cache, report=report, progress=progress, stop=stop
    )
    result = engine.compare(plan)
    c = result.counts
    if result.error:
        log.error("%s: not verified: %s", plan.dir_check, result.error)
    else:
        log.info(
            "%s: total=%d different=%d missing=%d more=%d errors=%d hashed=%dB in %.2fs",
            plan.dir_check, c.total, c.different, c.missing, c.more, c.errors,
            c.bytes_hashed, result.elapsed,
        )  # fmt: skip
    return result
