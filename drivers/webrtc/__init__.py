"""WebRTC cameras: a WHEP client (pull from a media server) and a WHIP server
(a browser or camera pushes to us), both on aiortc with newest-frame
semantics and RTCP-derived capture times.

Modules import aiortc, so they are imported only when a WebRTC camera is
chosen (through the entry points `camera.whep` and `camera.whip`).
"""
