"""Hardware drivers: cameras, robots and sensors behind small async interfaces.

Drivers never import the controller; the controller reaches them only through
`drivers.base` and `drivers.registry`.
"""
