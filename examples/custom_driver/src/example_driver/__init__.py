"""An example camera driver plugin for vla-controller."""
