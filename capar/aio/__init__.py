"""``capar.aio``: aioca's asyncio API on capar's libca binding, plus capar's bulk path as awaitables.

Switch from aioca by changing the import::

    from capar import aio as aioca            # or: from capar.aio import caget, caput, camonitor

    value = await aioca.caget("IOC:ai1", format=aioca.FORMAT_TIME)   # ca_float with .timestamp, .severity
    values = await aioca.caget(names, timeout=2.0, throw=False)        # CANothing (.ok False) per failure
    await aioca.caput("IOC:ao1", 3.5, wait=True)
    sub = aioca.camonitor("IOC:counter", print)                       # or: async for v in camonitor(pv)

capar's own awaitables (numpy columns, one deadline per batch)::

    snap = await aio.acquire(names, form="time", timeout=2.0)
    async with aio.Group(names, form="ctrl") as g:
        snap = await g.get(timeout=1.0)
    async with aio.Monitor(names) as mon:
        async for batch in mon: ...

libca's threads only hand work to the event loop (``loop.call_soon_threadsafe``); nothing blocks the loop,
and several loops in several threads may use CA at once.  ``import capar.aio`` loads no shared library:
libca is opened by the first CA call, as everywhere in capar.
"""
from __future__ import annotations

from ._catools import (
    CAInfo, CANothing, ChannelInfo, Subscription, caget, cainfo, camonitor, caput, connect, get_channel_infos,
    purge_channel_caches, run,
)
from .bulk import Group, Monitor, acquire
from .dbr import (
    DBE_ALARM, DBE_LOG, DBE_PROPERTY, DBE_VALUE, DBR_CHAR, DBR_CHAR_BYTES, DBR_CHAR_STR, DBR_CHAR_UNICODE,
    DBR_CLASS_NAME, DBR_DOUBLE, DBR_ENUM, DBR_ENUM_STR, DBR_FLOAT, DBR_LONG, DBR_PUT_ACKS, DBR_PUT_ACKT,
    DBR_SHORT, DBR_STRING, DBR_STSACK_STRING, FORMAT_CTRL, FORMAT_RAW, FORMAT_TIME, ca_extra_fields,
)
from .._version import __version__

__all__ = [
    # aioca's API
    "Subscription", "caput", "caget", "camonitor", "connect", "cainfo", "CAInfo", "CANothing", "ChannelInfo",
    "get_channel_infos", "purge_channel_caches", "run", "__version__",
    "DBE_VALUE", "DBE_LOG", "DBE_ALARM", "DBE_PROPERTY",
    "DBR_STRING", "DBR_SHORT", "DBR_FLOAT", "DBR_ENUM", "DBR_CHAR", "DBR_LONG", "DBR_DOUBLE", "DBR_CHAR_STR",
    "DBR_CHAR_UNICODE", "DBR_ENUM_STR", "DBR_CHAR_BYTES", "DBR_PUT_ACKT", "DBR_PUT_ACKS", "DBR_STSACK_STRING",
    "DBR_CLASS_NAME", "FORMAT_RAW", "FORMAT_TIME", "FORMAT_CTRL", "ca_extra_fields",
    # capar's bulk path
    "acquire", "Group", "Monitor",
]
