"""The buffer's codec fast paths agree byte for byte with common.codec, and fall back to it (and
its clear errors) on anything else; fields the fast decoder trusts are type-checked on insert."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from buffer_testlib import make_group
from common.codec import CodecError, decode, encode
from common.schemas import Group, Sample
from services.buffer.client import MalformedGroupError
from services.buffer.fastcodec import decode_sample, encode_sample, task_of_group_frame
from services.buffer.protocol import validate_group


def _variants() -> list[Sample]:
    base = make_group(0, [1, 0], tokens=1024).samples[0]
    return [
        base,
        dataclasses.replace(base, response_token_ids=np.zeros(0, np.int32), sampler_logprobs=np.zeros(0, np.float32)),
        dataclasses.replace(base, prompt_token_ids=np.arange(5, dtype=np.int64), response_text="réponse ✓ \\boxed{2}"),
        dataclasses.replace(base, sampler_logprobs=np.array([-np.inf, np.nan, -0.5, 0.0], np.float32),
                            response_token_ids=np.arange(4, dtype=np.int32)),
        dataclasses.replace(base, timings={"generate_s": 1.25, "tokens": 7}, extracted="42", created_at=5,
                            rethought=True, n_wait=2, reward=1.1, correct=True),
        dataclasses.replace(base, timings={"generate_s": np.float32(1.5)}),  # generic path
        dataclasses.replace(base, response_token_ids=np.arange(10, dtype=np.int32)[::2],  # not contiguous
                            sampler_logprobs=np.zeros(5, np.float32)),
    ]


@pytest.mark.parametrize("i", range(7))
def test_encode_is_byte_identical_and_decode_round_trips(i):
    s = _variants()[i]
    frame = encode_sample(s)
    assert frame == encode(s)
    a, b = decode_sample(frame), decode(frame, Sample)
    for f in dataclasses.fields(Sample):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y, f.name


def test_bad_frames_raise_the_codec_errors():
    frame = encode(_variants()[0])
    for bad in (b"", b"junk", frame[:40], frame[:-100], b"RTK\x01" + frame[4:40], encode(make_group(0, [1]).task)):
        with pytest.raises(CodecError):
            decode_sample(bad)


def test_task_of_group_frame():
    g = make_group(3, [1, 0])
    frame = encode(dataclasses.replace(g, samples=[]))
    assert task_of_group_frame(frame) == g.task == decode(frame, Group).task
    with pytest.raises(CodecError):
        task_of_group_frame(frame[:30])
    with pytest.raises(CodecError):
        task_of_group_frame(encode(g.samples[0]))


@pytest.mark.parametrize("change", [
    {"response_text": None}, {"finish_reason": 1}, {"correct": 1}, {"n_wait": 1.5}, {"extracted": 3},
    {"timings": []}, {"created_at": "now"},
])
def test_wrong_typed_sample_fields_are_malformed(change):
    g = make_group(0, [1, 0])
    g.samples[1] = dataclasses.replace(g.samples[1], **change)
    with pytest.raises(MalformedGroupError, match=next(iter(change))):
        validate_group(g)


@pytest.mark.parametrize("change", [{"question": None}, {"images": ["not bytes"]}, {"epoch": "1"}, {"meta": []}])
def test_wrong_typed_task_fields_are_malformed(change):
    g = make_group(0, [1, 0])
    g = dataclasses.replace(g, task=dataclasses.replace(g.task, **change))
    with pytest.raises(MalformedGroupError, match=next(iter(change))):
        validate_group(g)
