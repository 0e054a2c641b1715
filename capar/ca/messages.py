"""Where libca's printed messages and asynchronous CA exceptions go, per context.

A context's exception handler and printf handler are C callbacks bound to its :class:`~capar.ca.context.
CAContext`; they read the process's writer (``ContextRegistry.ca_messages``) each time: None = libca's
default (stderr), :func:`to_logger` = the ``capar.ca`` logger at DEBUG (the default, as pyepics keeps them
off the terminal), or the user's callable (:func:`capar.ca.replace_printf_handler`).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from . import errors
from .binding import ExceptionCallback, PrintfHandler, vformat

__all__ = ["to_logger", "install", "set_printf"]

log = logging.getLogger("capar")


def to_logger(text: str) -> None:
    """Where libca's printed messages go while CA messages are disabled: the 'capar.ca' logger (DEBUG)."""
    logging.getLogger("capar.ca").debug("libca: %s", text.rstrip("\n"))


def _write(writer: Callable[[str], Any], text: str) -> None:
    try:
        writer(text)
    except Exception:  # a writer must never raise into libca's thread
        pass


def _exception_callback(ctx: Any) -> Any:
    reg = ctx.registry

    def on_exception(args: Any) -> None:
        if ctx.closed:
            return
        where = args.ctx.decode("utf-8", "replace") if args.ctx else ""
        try:
            what = ctx.lib.ca_message(int(args.stat)).decode("utf-8", "replace")
        except Exception:
            what = errors.eca_message(args.stat)
        text = f"CA exception: {what} ({where})"
        writer: Optional[Callable[[str], Any]] = reg.ca_messages
        if writer is None or writer is to_logger:  # libca's own messages: on, or off the terminal (pyepics)
            log.log(logging.WARNING if writer is None else logging.INFO, "capar: %s", text)
        else:
            _write(writer, text + "\n")

    return ExceptionCallback(on_exception)


def _printf_callback(ctx: Any) -> Any:
    reg = ctx.registry

    def on_printf(fmt: Optional[bytes], args: Any) -> int:
        writer = reg.ca_messages
        if ctx.closed or writer is None:
            return 0
        try:
            text = vformat(ctx.lib, fmt or b"", args)
        except Exception:
            return 0
        _write(writer, text)
        return len(text)

    return PrintfHandler(on_printf)


def install(ctx: Any, printf: bool) -> None:
    """Route the calling thread's (new) context *ctx*'s CA exceptions to the ``capar`` logger (or the
    writer), and with *printf* its printed messages to the writer."""
    ctx.lib.ca_add_exception_event(ctx.c_callback("exception", _exception_callback), None)
    if printf:
        set_printf(ctx, True)


def set_printf(ctx: Any, on: bool) -> None:
    """Install (*on*) or remove capar's printf handler in the context the calling thread is attached to."""
    handler = ctx.c_callback("printf", _printf_callback) if on else PrintfHandler()  # NULL: libca's default
    ctx.lib.ca_replace_printf_handler(handler)
