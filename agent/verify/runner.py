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
from ..names import escape
from .cache import HashCache
from .cancel import Cancel
from .channel import Channel, Pool, default_workers
from .compare import Side
from .engine import Engine
from .plan import DirPlan, plan_directories
from .report import ProgressSink, ReportSink
from .targets import ALGORITHMS, TargetSpec, open_pool, spawn_local

log = logging.getLogger(__name__)


class _Pools:
    """Helper pools for one run, per side, machine and hash algorithm; both sides alike.

    The slower side decides the algorithm: a machine is first greeted with every algorithm
    and answers with the best it has; the other side is then offered that one or slower
    ones, and if it can only do slower, the first side follows it."""

    def __init__(self, config: AgentConfig, stack: ExitStack, cancel: Cancel):
        self.config = config
        self.stack = stack
        self.cancel = cancel  # ends the helpers on a stop, through these pools
        self.workers = config.limits.workers or default_workers()
        self.read_limit = int(config.limits.read_mb_per_s * 1_000_000)
        self._pools: dict[tuple[Side, str, str], Pool] = {}
        self._best: dict[tuple[Side, str], str] = {}  # what each machine answered first
        # A machine that could not be reached is not dialled again for each of its
        # directories in the same run: they all get the first attempt's error at once.
        self._unreachable: dict[tuple[Side, str], TargetError] = {}
        # Local helpers started ahead of their pool, per side, so they boot at once.
        self._spare: dict[Side, list[Channel]] = {}

    def prepare(self, plan: DirPlan) -> None:
        """Start each local side's helpers now, so they boot together and while a remote
        side is greeted, instead of one after the other."""
        for side, spec in ((Side.SOURCE, plan.source), (Side.TARGET, plan.target)):
            if spec.host is not None or side in self._spare:
                continue
            if any(s is side and key == "local" for s, key, _ in self._pools):
                continue
            self._spare[side] = spawn_local(self.workers)
            self.cancel.adopt(self._spare[side])
            self.stack.callback(self._close_spare, side)

    def pair(self, plan: DirPlan) -> tuple[Pool, Pool]:
        """(source pool, target pool) agreeing on one hash algorithm."""
        specs = {Side.SOURCE: plan.source, Side.TARGET: plan.target}
        # A remote machine first: it is the one that may lack xxh3.
        remote_source_only = plan.source.host is not None and plan.target.host is None
        order = [Side.SOURCE, Side.TARGET] if remote_source_only else [Side.TARGET, Side.SOURCE]
        pools: dict[Side, Pool] = {}
        offer: tuple[str, ...] = ALGORITHMS
        for side in order:
            pools[side] = self._pool(side, specs[side], offer)
            offer = ALGORITHMS[ALGORITHMS.index(pools[side].algorithm) :]
        first = order[0]
        if pools[first].algorithm != offer[0]:  # the second side is slower: the first follows
            pools[first] = self._pool(first, specs[first], offer[:1])
        return pools[Side.SOURCE], pools[Side.TARGET]

    def hang_up(self) -> None:
        """Tell every helper the run is over; closing the pools then only reaps them."""
        for pool in self._pools.values():
            for channel in pool.channels:
                channel.hang_up()

    def _close_spare(self, side: Side) -> None:
        """Helpers started ahead and never taken by a pool (the other side unreachable)."""
        for channel in self._spare.pop(side, []):
            channel.close()

    def _pool(self, side: Side, spec: TargetSpec, offer: tuple[str, ...]) -> Pool:
        failed = self._unreachable.get((side, spec.key))
        if failed is not None:
            raise failed
        best = self._best.get((side, spec.key))
        if best is not None:  # it computes its best and anything slower
            rank = ALGORITHMS.index(best)
            offer = tuple(a for a in offer if ALGORITHMS.index(a) >= rank) or offer
        pool = self._pools.get((side, spec.key, offer[0]))
        if pool is None or not pool.alive:
            try:
                pool = self._open(side, spec, offer)
            except TargetError as exc:
                self._unreachable[(side, spec.key)] = exc
                raise
            self._pools[(side, spec.key, pool.algorithm)] = pool
            if offer[0] == ALGORITHMS[0]:  # offered everything, it answered with its best
                self._best[(side, spec.key)] = pool.algorithm
        return pool

    def _open(self, side: Side, spec: TargetSpec, offer: tuple[str, ...]) -> Pool:
        started = self._spare.pop(side, None) if spec.host is None else None
        pool = open_pool(
            spec,
            side=side.value,
            ssh=self.config.ssh,
            workers=self.workers,
            algorithms=offer,
            read_limit=self.read_limit,
            started=started,
        )
        self.stack.callback(pool.close)
        self.cancel.adopt(pool.channels)
        if spec.host is not None:
            if pool.algorithm != ALGORITHMS[0]:
                log.warning(
                    "%s %s: no xxh3 there (no xxhash module, libxxhash or xxh128sum): both sides "
                    "hash with %s (%s) for this pair",
                    side.value, spec.key, pool.algorithm, pool.via,
                )  # fmt: skip
            else:
                log.info("%s %s: hashing with %s (%s)", side.value, spec.key, pool.algorithm,
                         pool.via)  # fmt: skip
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
    if stop.is_set():  # a run cut short starts no more helpers for the directories left
        log.info("%s: not verified: stopped on request", escape(plan.dir_check))
        return _unverified(plan, "interrupted before the directory was verified", started)
    try:
        pools.prepare(plan)
        source_pool, target_pool = pools.pair(plan)
    except AgentError as exc:
        log.error("%s: %s", escape(plan.dir_check), exc)
        return _unverified(plan, str(exc), started)
    engine = Engine(
        source_pool, target_pool, cache=cache, report=report, progress=progress, stop=stop
    )
    result = engine.compare(plan)
    c = result.counts
    if result.error and stop.is_set():
        # A requested stop (SIGTERM, Ctrl-C) is no fault: the next run verifies it.
        log.info("%s: not verified: stopped on request", escape(plan.dir_check))
    elif result.error:
        log.error("%s: not verified: %s", escape(plan.dir_check), result.error)
    else:
        log.info(
            "%s: total=%d different=%d missing=%d more=%d errors=%d hashed=%dB in %.2fs",
            escape(plan.dir_check), c.total, c.different, c.missing, c.more, c.errors,
            c.bytes_hashed, result.elapsed,
        )  # fmt: skip
    return result


def _unverified(plan: DirPlan, error: str, started: float) -> DirResult:
    return DirResult(
        dir_check=plan.dir_check,
        target=plan.target_text,
        source=plan.source_text,
        counts=DirCounts(),
        elapsed=time.monotonic() - started,
        hash_algorithm="",
        error=error,
    )
