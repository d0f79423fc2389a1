"""The asyncio runtime: slots, scheduler, compute executor, safety, controller, CLI, test harness."""
