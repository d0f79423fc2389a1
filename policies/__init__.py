"""Models: the `Policy` interface, the fake policy for tests, and the Qwen2.5-VL VLA policy.

Policies never import the controller; they are found by name through the
entry-point group `controller.policies`.
"""
