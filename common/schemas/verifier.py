"""Wire schemas of the verifier's HTTP API (``POST /v1/verify``): the app, its client and the rollout
scorers (``services.rollout.scoring``, through the ``Scorer`` interface) share them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class VerifyItem(BaseModel):
    """One response to judge."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "true" is not a bool, 1 is not a string

    id: str | None = None
    response: str
    gold: str
    question: str | None = None  # lets option text ("55") stand for its letter, and letters for their text
    eos: bool = True  # the response ended with EOS (no EOS -> invalid reward)
    rethought: bool = False  # a kept forced-rethinking response (no first-pass shaping bonus)


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "true" is not a bool, 1 is not a string

    items: list[VerifyItem] = Field(min_length=0)


class VerifyResult(BaseModel):
    """The verdict and reward of one item."""

    id: str | None = None
    correct: bool
    extracted: str | None = None
    reason: str
    reward: float
    n_wait: int
    timed_out: bool = False


class VerifyResponse(BaseModel):
    results: list[VerifyResult]
    elapsed_s: float = 0.0
