"""Codec: every schema round-trips; truncated or garbled frames fail with a clear CodecError."""

from __future__ import annotations

import random

import msgpack
import numpy as np
import pytest

from common.codec import CodecError, decode, encode
from common.schemas import Group, PolicyVersion, PromptTask, Sample, group_id_for


def make_sample(i: int = 0, n: int = 7) -> Sample:
    rng = np.random.default_rng(i)
    return Sample(
        sample_id=f"s{i}",
        group_id="g-t0",
        task_id="t0",
        prompt_id="q0",
        prompt_token_ids=rng.integers(0, 1000, 13).astype(np.int32),
        response_token_ids=rng.integers(0, 1000, n).astype(np.int32),
        sampler_logprobs=-rng.random(n).astype(np.float32),
        response_text="The answer is \\boxed{B}",
        reward=1.0,
        correct=True,
        extracted="B",
        rethought=bool(i % 2),
        n_wait=i,
        policy_version=3,
        advantage=0.5,
        timings={"generate_s": 0.25},
    )


def make_task() -> PromptTask:
    return PromptTask(
        task_id="t0", prompt_id="q0", question="<image>What colour?", answer="\\boxed{B}",
        images=[b"\x89PNG fake", b""], category="spatial reasoning", meta={"k": [1, 2]},
    )


def assert_sample_equal(a: Sample, b: Sample) -> None:
    for f in Sample.__dataclass_fields__:
        va, vb = getattr(a, f), getattr(b, f)
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and np.array_equal(va, vb), f
        else:
            assert va == vb, f


def test_round_trip_every_schema():
    task = make_task()
    samples = [make_sample(i) for i in range(3)] + [make_sample(9, n=0)]
    group = Group(group_id=group_id_for(task), task=task, samples=samples, policy_version=3, rethink_kept=1)
    back = decode(encode(group), Group)
    assert back.task == task
    for a, b in zip(samples, back.samples):
        assert_sample_equal(a, b)
    assert back.rethink_kept == 1 and back.group_id == "g-t0"
    assert decode(encode(task), PromptTask) == task
    pv = PolicyVersion(version=4, step=40, num_bytes=123)
    assert decode(encode(pv), PolicyVersion) == pv
    assert_sample_equal(decode(encode(samples[0]), Sample), samples[0])


def test_arrays_are_zero_copy_views():
    buf = bytearray(encode(make_sample(1, n=1000)))
    s = decode(buf, Sample)
    assert not s.response_token_ids.flags.owndata
    assert s.response_token_ids.base is not None
    # The view shares memory with the frame: flipping a byte in the frame shows in the array.
    before = s.sampler_logprobs.copy()
    off = bytes(buf).rfind(before.tobytes())
    buf[off] ^= 0xFF
    assert not np.array_equal(before, s.sampler_logprobs)


def test_list_of_schemas():
    items = [make_sample(i) for i in range(4)]
    back = decode(encode(items))
    assert [s.sample_id for s in back] == ["s0", "s1", "s2", "s3"]


def test_expect_type_mismatch():
    with pytest.raises(CodecError, match="expected a Group, got Sample"):
        decode(encode(make_sample()), Group)


def test_every_truncation_fails_cleanly():
    frame = encode(Group(group_id="g", task=make_task(), samples=[make_sample(0), make_sample(1)]))
    failures = 0
    for cut in range(len(frame)):
        try:
            decode(frame[:cut], Group)
        except CodecError:
            failures += 1
        # anything else (KeyError, struct.error, IndexError...) propagates and fails the test
    # Only cuts inside trailing alignment padding may still decode.
    assert failures >= len(frame) - 8


def test_garbled_bytes_never_raise_anything_but_codec_error():
    frame = bytearray(encode(Group(group_id="g", task=make_task(), samples=[make_sample(0)])))
    rng = random.Random(0)
    for _ in range(2000):
        mutated = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            decode(mutated)
        except CodecError:
            pass


@pytest.mark.parametrize(
    "header, needle",
    [
        ({"_t": "Nope", "_v": 1}, "unknown schema type 'Nope'"),
        ({"_t": "PolicyVersion", "_v": 99, "version": 1, "step": 1}, "schema version 99"),
        ({"_t": "PolicyVersion", "_v": 1, "version": 1}, "missing field(s) ['step']"),
        ({"_t": "PolicyVersion", "_v": 1, "version": 1, "step": 2, "bogus": 3}, "unknown field(s) ['bogus']"),
        ({"_t": "PolicyVersion", "_v": 1, "version": "one", "step": 2}, "PolicyVersion.version"),
    ],
)
def test_schema_errors_are_explained(header, needle):
    import struct

    body = msgpack.packb(header, use_bin_type=True)
    frame = struct.pack("<3sBI", b"RTK", 1, len(body)) + body
    with pytest.raises(CodecError) as exc:
        decode(frame)
    assert needle in str(exc.value)


def test_not_a_frame():
    with pytest.raises(CodecError, match="not a rethinker frame"):
        decode(b"GARBAGE-GARBAGE-GARBAGE")
    with pytest.raises(CodecError, match="truncated"):
        decode(b"")


def test_unsupported_values_are_refused():
    s = make_sample()
    s.prompt_token_ids = np.array(["a", "b"])
    with pytest.raises(CodecError, match="dtype"):
        encode(s)
