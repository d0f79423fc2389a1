"""The client codec against the simulator's separately written codec, and its error paths."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import ProtocolError
from drivers.ur import rtde_codec as c
from drivers.ur.sim import codec as simc

SAMPLES = {
    "BOOL": True,
    "UINT8": 200,
    "UINT32": 4_000_000_000,
    "UINT64": 2**63 + 5,
    "INT32": -123456,
    "DOUBLE": -1.25e-3,
    "VECTOR3D": (1.0, -2.5, 3.25),
    "VECTOR6D": (0.1, 0.2, -0.3, 0.4, 0.5, -0.6),
    "VECTOR6INT32": (-1, 2, -3, 4, -5, 2**31 - 1),
    "VECTOR6UINT32": (0, 1, 2, 3, 4, 2**32 - 1),
}


@pytest.mark.parametrize("typ", sorted(SAMPLES))
def test_every_type_round_trips_between_the_two_codecs(typ: str) -> None:
    names = [f"v_{typ}", "timestamp"]
    types = [typ, "DOUBLE"]
    # server -> client (output data, v2 carries the recipe id)
    sim_recipe = simc.SimRecipe(3, names, types)
    value = list(SAMPLES[typ]) if isinstance(SAMPLES[typ], tuple) else SAMPLES[typ]
    packet = sim_recipe.pack([value, 12.5], with_id=True)
    [(ptype, payload)] = c.PacketSplitter().feed(packet)
    recipe = c.Recipe.build(3, names, types)
    got = c.decode_data(recipe, payload, with_id=True)
    assert ptype == c.DATA_PACKAGE
    assert got == {names[0]: SAMPLES[typ], "timestamp": 12.5}
    # client -> server (input data)
    out = c.encode_data(recipe, {names[0]: SAMPLES[typ], "timestamp": 12.5})
    buf = bytearray(out)
    [(kind, body)] = simc.split_stream(buf)
    back = sim_recipe.unpack(body)
    assert kind == simc.U
    assert back[names[0]] == value and back["timestamp"] == 12.5


def test_v1_output_data_has_no_recipe_id() -> None:
    sim_recipe = simc.SimRecipe(1, ["timestamp"], ["DOUBLE"])
    [(_, payload)] = c.PacketSplitter().feed(sim_recipe.pack([2.0], with_id=False))
    assert c.decode_data(c.Recipe.build(1, ["timestamp"], ["DOUBLE"]), payload, with_id=False) == {
        "timestamp": 2.0
    }


def test_setup_requests_read_by_the_simulator() -> None:
    buf = bytearray(c.encode_setup_outputs(["timestamp", "actual_q"], 125.0, protocol=2))
    [(kind, body)] = simc.split_stream(buf)
    assert kind == simc.O
    assert simc.read_output_setup(body, 2) == (125.0, ["timestamp", "actual_q"])
    buf = bytearray(c.encode_request_protocol(2))
    [(kind, body)] = simc.split_stream(buf)
    assert (kind, simc.read_protocol_request(body)) == (simc.V, 2)


def test_setup_reply_refusals_name_the_variables() -> None:
    payload = simc.setup_reply(0, ["DOUBLE", "NOT_FOUND"])
    with pytest.raises(c.RecipeRefused, match=r"bogus \(NOT_FOUND\)"):
        c.decode_setup_reply(c.SETUP_OUTPUTS, payload, ["timestamp", "bogus"], with_id=True)
    payload = simc.setup_reply(0, ["IN_USE"])
    with pytest.raises(c.RecipeRefused, match="IN_USE"):
        c.decode_setup_reply(c.SETUP_INPUTS, payload, ["input_int_register_24"], with_id=True)


def test_text_message_both_codecs() -> None:
    pkt = simc.text_message("Protective Stop", "sim", 1, protocol=2)
    [(ptype, payload)] = c.PacketSplitter().feed(pkt)
    assert ptype == c.TEXT_MESSAGE
    assert c.decode_text(payload, 2) == ("ERROR", "sim", "Protective Stop")


def test_split_and_merged_reads() -> None:
    pkts = [simc.version_reply((5, 11, 2, 1)), simc.flag(simc.S, True), simc.flag(simc.P, False)]
    stream = b"".join(pkts)
    for cut in range(len(stream) + 1):
        sp = c.PacketSplitter()
        got = sp.feed(stream[:cut]) + sp.feed(stream[cut:])
        assert [t for t, _ in got] == [c.GET_URCONTROL_VERSION, c.START, c.PAUSE]
        assert c.decode_version(got[0][1]) == (5, 11, 2, 1)
        assert sp.pending == 0


def test_errors_name_type_and_length() -> None:
    with pytest.raises(ProtocolError, match=r"v \(controller version\) with 3-byte payload"):
        c.decode_version(b"\x00\x01\x02")
    recipe = c.Recipe.build(1, ["actual_q"], ["VECTOR6D"])
    with pytest.raises(ProtocolError, match=r"U \(data\) with 9-byte payload.*needs 48 bytes"):
        c.decode_data(recipe, b"\x01" + struct.pack(">d", 1.0), with_id=True)
    with pytest.raises(ProtocolError, match="smaller than its header"):
        c.PacketSplitter().feed(b"\x00\x01U")


RECIPE = c.Recipe.build(
    2,
    ["timestamp", "actual_q", "robot_mode", "safety_status_bits", "b"],
    ["DOUBLE", "VECTOR6D", "INT32", "UINT32", "BOOL"],
)


def parse_everything(stream: bytes) -> None:
    """What the client does with bytes from the wire, for every packet type."""
    for ptype, payload in c.PacketSplitter().feed(stream):
        if ptype == c.DATA_PACKAGE:
            c.decode_data(RECIPE, payload, with_id=True)
            c.decode_data(RECIPE, payload, with_id=False)
        elif ptype == c.TEXT_MESSAGE:
            c.decode_text(payload, 2)
            c.decode_text(payload, 1)
        elif ptype == c.GET_URCONTROL_VERSION:
            c.decode_version(payload)
        elif ptype in (c.SETUP_OUTPUTS, c.SETUP_INPUTS):
            try:
                c.decode_setup_reply(ptype, payload, ["a", "b"], with_id=True)
            except c.RecipeRefused:
                pass
        elif ptype in (c.REQUEST_PROTOCOL_VERSION, c.START, c.PAUSE):
            c.decode_accepted(ptype, payload)
        else:
            raise c.bad_packet(ptype, payload, "unexpected")


packet_types = st.sampled_from([86, 118, 77, 85, 79, 73, 83, 80, 0, 255])


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    ptype = draw(packet_types)
    if draw(st.booleans()):
        body = draw(st.binary(max_size=80))
    else:  # near-valid bodies, then truncated or extended
        good = {
            85: bytes([2]) + RECIPE.layout.pack(1.0, *range(6), 7, 3, True),
            77: simc.text_message("hello", "src", 3, 2)[3:],
            118: bytes(16),
            79: b"\x01DOUBLE,INT32",
        }.get(ptype, b"\x01")
        cut = draw(st.integers(0, len(good) + 3))
        body = (good + draw(st.binary(max_size=3)))[:cut]
    size = len(body) + 3
    if draw(st.integers(0, 9)) == 0:
        size = draw(st.integers(0, 0xFFFF))
    return struct.pack(">HB", size, ptype) + body


@settings(max_examples=2000, deadline=None)
@given(st.lists(packets(), min_size=1, max_size=4), st.integers(0, 6))
def test_fuzz_parser_raises_only_protocol_error(stream: list[bytes], chop: int) -> None:
    data = b"".join(stream)
    data = data[: len(data) - chop] if chop else data
    try:
        parse_everything(data)
    except ProtocolError:
        pass


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        parse_everything(data)
    except ProtocolError:
        pass
