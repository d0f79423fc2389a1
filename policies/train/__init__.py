"""Training the Qwen2.5-VL policy from LeRobot v3 datasets (`python -m policies.train`).

    python -m policies.train vl --dataset DS --out VLDIR [--aux-target named-cube-xy]
    python -m policies.vl_cache build --lerobot DS --vl-model VLDIR --out CACHE
    python -m policies.train expert --dataset DS --cache CACHE --out CKPT [--head flow]

Modules: `data` (samples, split, action-chunk targets in the checkpoint's action
space), `common` (arguments, the loop both stages run), `rundir` (output
directories, resume state, atomic saves), `vl_stage` (VL tuning), `expert_stage`
(the action expert on cached or live features). The dataset reader is
`policies.lerobot_dataset`.
"""
