"""Small SDP helpers shared by the WHIP server and the WHEP client.

aiortc accepts almost any text in `setRemoteDescription` and fails later, deep
inside, with errors that name nothing useful; these checks turn a bad offer
into one clear reason before any session state exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Codecs aiortc can decode, in order of preference.
DECODABLE = ("video/VP8", "video/H264")


class SdpError(ValueError):
    """The SDP text is not something we can negotiate; the message says why."""


@dataclass(slots=True)
class SdpFragment:
    """A trickle-ICE fragment (RFC 8840): credentials and candidates by mid."""

    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[tuple[str | None, str]] = field(default_factory=list)
    end_of_candidates: bool = False


def check_offer(text: str) -> None:
    """Raise `SdpError` unless `text` looks like a session with a video section."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("not an SDP session description (must start with 'v=0')")
    if not any(ln.startswith("o=") for ln in lines):
        raise SdpError("SDP has no origin ('o=') line")
    media = [ln for ln in lines if ln.startswith("m=")]
    if not media:
        raise SdpError("SDP has no media section")
    if not any(ln.startswith("m=video ") for ln in media):
        raise SdpError("SDP has no video section")
    if not any(ln.startswith("a=ice-ufrag:") for ln in lines):
        raise SdpError("SDP has no ICE credentials ('a=ice-ufrag')")
    if not any(ln.startswith("a=fingerprint:") for ln in lines):
        raise SdpError("SDP has no DTLS fingerprint")


def ice_ufrag(text: str) -> str | None:
    for ln in text.splitlines():
        if ln.startswith("a=ice-ufrag:"):
            return ln.split(":", 1)[1].strip()
    return None


def parse_fragment(text: str) -> SdpFragment:
    """Parse an `application/trickle-ice-sdpfrag` body."""
    frag = SdpFragment()
    mid: str | None = None
    for raw in text.splitlines():
        ln = raw.strip()
        if ln.startswith("a=ice-ufrag:"):
            frag.ufrag = ln.split(":", 1)[1].strip()
        elif ln.startswith("a=ice-pwd:"):
            frag.pwd = ln.split(":", 1)[1].strip()
        elif ln.startswith("a=mid:"):
            mid = ln.split(":", 1)[1].strip()
        elif ln.startswith("a=candidate:"):
            frag.candidates.append((mid, ln[len("a=") :]))
        elif ln == "a=end-of-candidates":
            frag.end_of_candidates = True
        elif ln and not (ln.startswith("m=") or ln.startswith("a=") or ln.startswith("c=")):
            raise SdpError(f"unexpected line in SDP fragment: {ln[:60]!r}")
    return frag


def prefer_decodable(transceiver: object) -> None:
    """Offer or accept only codecs aiortc decodes (VP8, H264) plus their RTX."""
    from aiortc import RTCRtpReceiver

    caps = RTCRtpReceiver.getCapabilities("video")
    chosen = [c for name in DECODABLE for c in caps.codecs if c.mimeType == name]
    chosen += [c for c in caps.codecs if c.mimeType == "video/rtx"]
    transceiver.setCodecPreferences(chosen)  # type: ignore[attr-defined]
