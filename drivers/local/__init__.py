"""Local cameras through PyAV: V4L2 devices and lavfi test sources."""
