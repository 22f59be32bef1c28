"""Rollout servers: generation engines, the actor loop with Forced Rethinking, weight receiving.

Public API for other parts: ``services.rollout.engines`` (``make_engine``, ``SamplingParams``,
``GenerationRequest``...) for local decoding and ``services.rollout.client`` (``RolloutClient``)
for a running server.  See docs/rollout.md.
"""
