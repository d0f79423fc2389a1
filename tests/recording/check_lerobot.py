"""Load a dataset made by `controller.collect` with LeRobot's own `LeRobotDataset` (v3.0).

Run by hand, not by pytest: LeRobot pins an older torch and hub than ours,
so it lives in a venv of its own (see ../shared/FACTS.md: lerobot 0.4.4
installed with `--no-deps` plus its dataset module's few dependencies):

```sh
python -m controller.collect --task reach --episodes 3 --out /tmp/ds --json /tmp/ds.json
/tmp/lerobot-venv/bin/python tests/recording/check_lerobot.py /tmp/ds /tmp/ds.json
```

(After appending, name every collection's JSON: `DIR A.json B.json`.)
The collections' `--json` summaries are the expectation (what the collector
says it saved); LeRobot is asked what it reads: episodes, frames per
episode, cameras, the task of every frame, the seeds and success flags of
the episodes table, and frames decoded by LeRobot's video backend compared
with the independent PyAV reader (`v3_reader`). If video decoding cannot
work (no torchcodec or no FFmpeg libraries), it says so and checks the
metadata and the rows only. Exit 0 when everything matches, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: check_lerobot.py DATASET_DIR COLLECT_JSON...", file=sys.stderr)
        return 2
    root = Path(argv[0])
    if not (root / "meta" / "info.json").is_file():
        print(f"{root} holds no dataset (no meta/info.json)", file=sys.stderr)
        return 2
    # A dataset LeRobot cannot read locally makes it ask the hub: never, here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    episodes = [e for path in argv[1:] for e in json.loads(Path(path).read_text())["episodes"]]
    episodes.sort(key=lambda e: e["episode_index"])
    problems: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  {'ok ' if ok else 'BAD'} {what}")
        if not ok:
            problems.append(what)

    t0 = time.monotonic()
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    print(f"lerobot {lerobot.__version__}, imported in {time.monotonic() - t0:.1f} s")
    meta = LeRobotDatasetMetadata("local/collected", root=root)
    first = episodes[0]["episode_index"] if episodes else 0
    print(f"metadata: {meta.total_episodes} episodes, {meta.total_frames} frames, fps {meta.fps}")
    check(meta.info["codebase_version"] == "v3.0", "codebase_version v3.0")
    check(
        meta.total_episodes == first + len(episodes),
        f"total_episodes {meta.total_episodes} == {first + len(episodes)}",
    )
    cams = [k.removeprefix("observation.images.") for k in meta.camera_keys]
    print(f"cameras: {cams}")
    check(meta.video_keys == meta.camera_keys, "every camera is a video")
    check(
        "observation.environment_state" in meta.features,
        "observation.environment_state is a feature: "
        + str(meta.features.get("observation.environment_state", {}).get("shape")),
    )
    table = meta.episodes
    lengths = dict(zip(table["episode_index"], table["length"], strict=True))
    seeds = dict(zip(table["episode_index"], table["seed"], strict=True))
    success = dict(zip(table["episode_index"], table["success"], strict=True))
    tasks = dict(zip(table["episode_index"], table["tasks"], strict=True))
    for ep in episodes:
        i = ep["episode_index"]
        check(
            (lengths[i], seeds[i], success[i], list(tasks[i]))
            == (ep["frames"], ep["seed"], ep["success"], [ep["instruction"]]),
            f"episode {i}: {lengths[i]} frames, seed {seeds[i]}, success {success[i]},"
            f" task {list(tasks[i])}",
        )

    t0 = time.monotonic()
    ds = LeRobotDataset("local/collected", root=root)
    print(
        f"LeRobotDataset: {len(ds)} frames, {ds.num_episodes} episodes, loaded in"
        f" {time.monotonic() - t0:.1f} s"
    )
    check(len(ds) == meta.total_frames, f"len(dataset) {len(ds)} == total_frames")

    # By path: another package's `tests` may be installed in LeRobot's venv.
    sys.path.insert(0, str(HERE))
    import v3_reader

    ours = v3_reader.load(root)
    decode_ok = True
    for ep in episodes:
        i = ep["episode_index"]
        start = int(table["dataset_from_index"][i])
        picks = sorted({0, ep["frames"] // 2, ep["frames"] - 1})
        rows = ours.rows(i)
        for k in picks:
            try:
                item = ds[start + k]
            except Exception as exc:  # video decoding needs torchcodec and FFmpeg's libraries
                if decode_ok:
                    print(
                        f"  video decoding is not available here ({type(exc).__name__}: {exc});"
                        " checking metadata and rows only"
                    )
                decode_ok = False
                item = ds.hf_dataset[start + k]
            check(
                item["task"] == ep["instruction"] if "task" in item else True,
                f"episode {i} frame {k}: task {item.get('task')!r}",
            )
            for key in ("observation.state", "action", "observation.environment_state"):
                got = np.asarray(item[key], dtype=np.float32)
                want = np.asarray(rows[key][k].as_py(), dtype=np.float32)
                check(np.array_equal(got, want), f"episode {i} frame {k}: {key} as written")
            if not decode_ok:
                continue
            for key in meta.camera_keys:
                img = item[key].numpy()  # (3, H, W) float in [0, 1]
                want = ours.frames(key, i)[k].astype(np.float32) / 255.0
                err = float(np.abs(img.transpose(1, 2, 0) - want).max())
                check(
                    img.shape[0] == 3 and err < 1e-6,
                    f"episode {i} frame {k}: {key} {tuple(img.shape)} is the frame PyAV decodes"
                    f" (max diff {err:.1e})",
                )
    if problems:
        print(f"{len(problems)} problem(s)")
        return 1
    video = "videos decoded by LeRobot" if decode_ok else "videos NOT decoded (metadata and rows)"
    print(f"all checks passed ({video})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
