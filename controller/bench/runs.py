"""One run of the controller, or of the design note's loop, with the probe's taps in place.

Shared by `loop` and `seed-table`: both build the run from the same
`RunConfig` the CLI reads (`controller.cli.build`), so a benchmark row is
what `python -m controller` with those settings would do.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from controller.bench.probe import ActTap, CommandTap, Probe
from controller.config import RunConfig

T = TypeVar("T")


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`uvloop` (what the CLI uses when installed) or `asyncio` (the standard loop)."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def fresh_heap() -> None:
    """Collect and freeze the heap before every run, whichever loop runs.

    A full collection over torch, transformers and aiortc stops a loop for
    ~0.1 s. The controller freezes its heap at warm-up; doing the same before
    every run of either loop keeps such a pause from landing in one loop's
    row and not the other's because of the order the rows ran in.
    """
    gc.collect()
    gc.freeze()


def run_on(event_loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh event loop of that kind."""
    fresh_heap()
    with asyncio.Runner(loop_factory=event_loop_factory(event_loop)) as runner:
        return runner.run(main)


async def controller_run(run: RunConfig, seconds: float, probe: Probe) -> dict[str, Any]:
    """The controller, as the CLI builds it, for `seconds` of control; its telemetry summary."""
    from controller.cli import build

    controller = build(run)
    controller.observers.append(probe.observer)
    controller.policy = ActTap(controller.policy, probe)
    controller.robot = CommandTap(controller.robot, probe)  # type: ignore[assignment]
    return await controller.run(seconds)


async def note_run(run: RunConfig, seconds: float, probe: Probe) -> dict[str, Any]:
    """The note's loop with the same drivers, policy, device and VL padding as the controller."""
    from controller.bench.note_loop import run_note_loop
    from controller.executor import resolve_device
    from controller.vl_latency import PaddedPolicy, RealTimePadding
    from drivers import registry
    from policies import base as policies

    loop = asyncio.get_running_loop()
    cfg = run.controller
    robot = registry.create("robot", run.robot.spec, run.robot.options)
    cameras = [registry.create("camera", c.spec, c.options) for c in run.cameras]
    policy = policies.create(run.policy, run.policy_options)
    # The same device and torch threads as the controller's executor gets, off the loop.
    device = await loop.run_in_executor(None, resolve_device, run.device)
    await loop.run_in_executor(None, policy.load, device, robot.info, cfg.period)
    if cfg.vl_latency > 0:
        policy = PaddedPolicy(policy, cfg.vl_latency, RealTimePadding())
    return await run_note_loop(
        ActTap(policy, probe),
        CommandTap(robot, probe),  # type: ignore[arg-type]
        cameras,
        hz=cfg.hz,
        seconds=seconds,
        instruction=cfg.instruction,
        probe=probe,
        warmup_timeout=cfg.warmup_timeout,
    )
