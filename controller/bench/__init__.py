"""One benchmark suite: `python -m controller.bench loop|seed-table|vl|act|camera|wake|tick-cost`.

* `loop` (`loop.py`): tick lateness, overhead and ticks on time of the
  controller in each of its modes, beside the design note's loop
  (`note_loop.py`) in the same run.
* `seed-table` (`seed_table.py`): the note's table, synchronous encode-then-act
  against asynchronous with reuse, with a ~300 ms encoder.
* `vl` (`vl.py`): VL encode latency split into preprocessing and forward.
* `act` (`act.py`): the action expert's latency.
* `camera` (`camera.py`): camera-to-slot latency and CPU per frame, WHIP.
* `wake` (`wake.py`): the scheduler alone: how late the loop's timer fires,
  what each spin buys and its CPU, per event loop, load and rate (to choose
  `controller.runtime.DEFAULT_SPIN`).
* `tick-cost` (`tick_cost.py`): what the pieces of a tick (the safety
  filter's two questions, an empty call, a numpy call) cost back to back
  and after a sleep, i.e. on the cold cache every tick starts with.

Each prints a Markdown table, writes JSON with `--json PATH` (the machine,
the versions, the date and the exact command line beside the rows:
`common.py`) and shows its progress on stderr. Measuring tools, not tests:
the tests run them with tiny durations and check what they report, never
how fast.
"""
