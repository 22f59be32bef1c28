"""A minimal rollout stand-in that drives the real buffer for learner tests (not a test module).

It claims the learner's prompt tasks, answers each with ``n`` random-token responses whose sampler
log-probs come from the tiny model (teacher-forced), gives seeded 0/1 rewards, stores the group
(the buffer computes advantages) and acks the task.  Run in a thread or as ``python producer.py
CONFIG_JSON MODEL_DIR`` (stops on SIGTERM).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.config import RethinkerConfig, config_from_json  # noqa: E402
from common.schemas import Group, Sample, group_id_for, new_id  # noqa: E402


class Producer:
    def __init__(self, cfg: RethinkerConfig, model_dir: str, *, seed: int = 0, consumer: str = "producer-0") -> None:
        from common.model_loading import load_model, load_processor
        from services.buffer.client import BufferClient

        self.cfg = cfg
        self.client = BufferClient(cfg)
        self.model = load_model(model_dir)
        self.processor = load_processor(model_dir, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
        self.rng = np.random.default_rng(seed)
        self.consumer = consumer
        self.stop_event = threading.Event()
        self.groups = 0
        self.solved_groups = 0  # this many first groups are answered all-correct (zero advantage)
        tok = self.processor.tokenizer
        self.first_special = int(tok.convert_tokens_to_ids("<|endoftext|>"))
        self.eos = int(tok.convert_tokens_to_ids("<|im_end|>"))

    def answer(self, task) -> Group:
        from common.model_loading import build_prompt_inputs, teacher_forced_logprobs_batch

        d = self.cfg.data
        pi = build_prompt_inputs(self.processor, task.question, list(task.images), task.prompt_suffix, d.min_pixels, d.max_pixels)
        comps = [
            torch.tensor(self.rng.integers(3, self.first_special, size=int(self.rng.integers(4, 12))).tolist() + [self.eos])
            for _ in range(task.n)
        ]
        with torch.no_grad():
            logps = teacher_forced_logprobs_batch(self.model, [(pi, c) for c in comps])
        rewards = self.rng.integers(0, 2, size=task.n).astype(float)
        if self.solved_groups > 0:
            self.solved_groups -= 1
            rewards[:] = 1.0
        gid = group_id_for(task)
        samples = [
            Sample(
                sample_id=new_id("s-"), group_id=gid, task_id=task.task_id, prompt_id=task.prompt_id,
                prompt_token_ids=pi["input_ids"][0].numpy().astype(np.int32),
                response_token_ids=c.numpy().astype(np.int32),
                sampler_logprobs=lp.numpy().astype(np.float32),
                response_text="x", reward=float(r), correct=bool(r > 0), policy_version=task.policy_version,
            )
            for c, lp, r in zip(comps, logps, rewards)
        ]
        return Group(group_id=gid, task=task, samples=samples, server_id=self.consumer, policy_version=task.policy_version)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                claimed = self.client.claim_tasks(self.consumer, 4, block_ms=200)
            except Exception:  # noqa: BLE001 - Redis blip in a test helper: retry
                time.sleep(0.1)
                continue
            for ct in claimed:
                self.client.add_group(self.answer(ct.task))
                self.client.ack_task(ct.entry_id)
                self.groups += 1

    def start(self) -> "Producer":
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


if __name__ == "__main__":
    cfg = config_from_json(Path(sys.argv[1]).read_text())
    p = Producer(cfg, sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: p.stop_event.set())
    print("ready", flush=True)
    p.run()
