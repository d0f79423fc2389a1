"""The Qwen2.5-VL action policy.

Modules, one job each: `config` (the JSON checkpoint config), `vl_encoder`
(the ONE place preprocessing and pooling are defined, shared by the real-time
path and the training-time VL cache), `state_encoders` and `action_expert`
(the small fast networks `act` runs), `checkpoint` (directory format),
`tiny_default` (the embedded random tiny Qwen2.5-VL) and `policy` (the
`Policy` the controller drives). Nothing heavy is imported here, so listing
policies stays cheap.
"""
