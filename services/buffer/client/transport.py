"""How a buffer command reaches Redis: the effects a command asks for and the two executors.

Every client method is written once, as a generator (a *command*) in one of the concern modules
(``queue``, ``store``, ``versions``, ``registry``, ``admin``).  A command does no I/O itself: it
yields effects and receives their replies (or has the effect's exception thrown into it at the
``yield``), and returns the method's result::

    def ack_task(c, entry_id):
        reply = yield Fcall("rtk_q_ack", [c.keys.task_stream], [c.keys.task_group, entry_id])
        return int(reply) == 1

``run_sync`` / ``run_async`` drive a command against a redis-py client (sync or asyncio); they are
the only place where the two clients differ.  ``sync_method`` / ``async_method`` turn a command into
a ``BufferClient`` / ``AsyncBufferClient`` method with the command's signature and docstring.

Effects:

- ``Fcall``: one call of a buffer Redis Function.  Loads the library first if this client has not
  checked it yet; a "Function not found" reply (a server that lost its functions) reloads the
  library and repeats the call once; ``RTK_BADARG`` replies become ``BadArgumentError`` (or
  ``MalformedGroupError`` with ``group=True``).
- ``Pipeline``: the commands ``fill(pipe)`` queues, in one round trip.  With ``functions=True``
  (the default) the library is checked first, replies come back as a list with errors in it (not
  raised) and a pipeline whose replies say "Function not found" is reloaded and sent once more;
  with ``functions=False`` it is a plain pipeline whose first error is raised.
- ``Call``: one plain redis-py method (``xclaim``, ``zadd`` ...), its errors raised into the command.
- ``Sleep``: wait (``time.sleep`` / ``asyncio.sleep``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Concatenate, Generator, ParamSpec, Sequence, TypeVar

import redis

from services.buffer import protocol as P
from services.buffer.library import is_missing_function

if TYPE_CHECKING:
    from services.buffer.client.clients import AsyncBufferClient, BufferClient


@dataclass(frozen=True, slots=True)
class Fcall:
    fn: str
    keys: Sequence[str]
    args: Sequence[Any]
    ro: bool = False  # FCALL_RO
    group: bool = False  # RTK_BADARG -> MalformedGroupError instead of BadArgumentError


@dataclass(frozen=True, slots=True)
class Pipeline:
    fill: Callable[[Any], Any]
    transaction: bool = False
    functions: bool = True  # library check + reload; errors returned in the list


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Effect = Fcall | Pipeline | Call | Sleep
R = TypeVar("R")
Ps = ParamSpec("Ps")
Command = Generator[Effect, Any, R]


def call(method: str, *args: Any, **kwargs: Any) -> Call:
    """``Call`` of the redis-py method ``method`` with these arguments."""
    return Call(method, args, kwargs)


def _missing_in(replies: Sequence[Any]) -> bool:
    return any(isinstance(x, redis.ResponseError) and is_missing_function(x) for x in replies)


def _as_method(method: Callable[..., Any], fn: Callable[..., Any]) -> None:
    """Give ``method`` the name, docstring and signature of the command ``fn`` as a method: first
    parameter ``self``, return annotation the command's result (not the generator)."""
    functools.update_wrapper(method, fn)
    del method.__wrapped__  # type: ignore[attr-defined]
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    params[0] = params[0].replace(name="self", annotation=inspect.Parameter.empty)
    ret = sig.return_annotation
    if isinstance(ret, str) and ret.startswith("Command[") and ret.endswith("]"):
        ret = ret[len("Command[") : -1]
    method.__signature__ = sig.replace(parameters=params, return_annotation=ret)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- sync


def _execute_sync(c: "BufferClient", eff: Effect) -> Any:
    r = c.r
    if isinstance(eff, Fcall):
        if not c._loaded:
            c.ensure_library()
        fcall = r.fcall_ro if eff.ro else r.fcall
        try:
            return fcall(eff.fn, len(eff.keys), *eff.keys, *eff.args)
        except redis.ResponseError as exc:
            if not is_missing_function(exc):
                raise P.translate_error(exc, group=eff.group) from None
        c.ensure_library(force=True)
        try:
            return fcall(eff.fn, len(eff.keys), *eff.keys, *eff.args)
        except redis.ResponseError as exc:
            raise P.translate_error(exc, group=eff.group) from None
    if isinstance(eff, Pipeline):
        if not eff.functions:
            with r.pipeline(transaction=eff.transaction) as p:
                eff.fill(p)
                return p.execute()
        if not c._loaded:
            c.ensure_library()
        for attempt in range(2):
            with r.pipeline(transaction=eff.transaction) as p:
                eff.fill(p)
                replies = p.execute(raise_on_error=False)
            if attempt == 0 and _missing_in(replies):
                c.ensure_library(force=True)
                continue
            return replies
        return replies
    if isinstance(eff, Call):
        return getattr(r, eff.method)(*eff.args, **eff.kwargs)
    if isinstance(eff, Sleep):
        time.sleep(eff.seconds)
        return None
    raise TypeError(f"not a buffer effect: {eff!r}")


def run_sync(c: "BufferClient", cmd: Command[R]) -> R:
    """Drive ``cmd`` to its result with the sync client ``c``."""
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            eff = cmd.send(reply) if error is None else cmd.throw(error)
        except StopIteration as done:
            return done.value
        try:
            reply, error = _execute_sync(c, eff), None
        except Exception as exc:  # noqa: BLE001 - raised into the command, which decides
            reply, error = None, exc


def sync_method(fn: Callable[Concatenate[Any, Ps], Command[R]]) -> Callable[Concatenate[Any, Ps], R]:
    """A ``BufferClient`` method running the command ``fn``."""

    def method(self: "BufferClient", *args: Ps.args, **kwargs: Ps.kwargs) -> R:
        return run_sync(self, fn(self, *args, **kwargs))

    _as_method(method, fn)
    return method


# --------------------------------------------------------------------------- asyncio


async def _execute_async(c: "AsyncBufferClient", eff: Effect) -> Any:
    r = c.r
    if isinstance(eff, Fcall):
        if not c._loaded:
            await c.ensure_library()
        fcall = r.fcall_ro if eff.ro else r.fcall
        try:
            return await fcall(eff.fn, len(eff.keys), *eff.keys, *eff.args)
        except redis.ResponseError as exc:
            if not is_missing_function(exc):
                raise P.translate_error(exc, group=eff.group) from None
        await c.ensure_library(force=True)
        try:
            return await fcall(eff.fn, len(eff.keys), *eff.keys, *eff.args)
        except redis.ResponseError as exc:
            raise P.translate_error(exc, group=eff.group) from None
    if isinstance(eff, Pipeline):
        if not eff.functions:
            async with r.pipeline(transaction=eff.transaction) as p:
                eff.fill(p)
                return await p.execute()
        if not c._loaded:
            await c.ensure_library()
        for attempt in range(2):
            async with r.pipeline(transaction=eff.transaction) as p:
                eff.fill(p)
                replies = await p.execute(raise_on_error=False)
            if attempt == 0 and _missing_in(replies):
                await c.ensure_library(force=True)
                continue
            return replies
        return replies
    if isinstance(eff, Call):
        return await getattr(r, eff.method)(*eff.args, **eff.kwargs)
    if isinstance(eff, Sleep):
        await asyncio.sleep(eff.seconds)
        return None
    raise TypeError(f"not a buffer effect: {eff!r}")


async def run_async(c: "AsyncBufferClient", cmd: Command[R]) -> R:
    """Drive ``cmd`` to its result with the asyncio client ``c``."""
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            eff = cmd.send(reply) if error is None else cmd.throw(error)
        except StopIteration as done:
            return done.value
        try:
            reply, error = await _execute_async(c, eff), None
        except Exception as exc:  # noqa: BLE001 - raised into the command, which decides
            reply, error = None, exc


def async_method(fn: Callable[Concatenate[Any, Ps], Command[R]]) -> Callable[Concatenate[Any, Ps], Awaitable[R]]:
    """An ``AsyncBufferClient`` coroutine method running the command ``fn``."""

    async def method(self: "AsyncBufferClient", *args: Ps.args, **kwargs: Ps.kwargs) -> R:
        return await run_async(self, fn(self, *args, **kwargs))

    _as_method(method, fn)
    return method
