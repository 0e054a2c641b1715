"""ophyd (v1) on capar: :func:`use_capar` makes ``EpicsSignal``, ``EpicsMotor``, ``Device`` ... use capar's PV.

::

    import capar.ophyd
    capar.ophyd.use_capar()          # before the first Signal/Device is made
    import ophyd
    m = ophyd.EpicsMotor("IOC:m1", name="m1")

ophyd talks to its EPICS client through a *control layer* (``ophyd.cl``): a namespace with ``get_pv``,
``release_pvs``, ``caget``, ``caput``, ``setup``, ``get_dispatcher``, ``thread_class`` and ``name``.  This
module is that namespace, built the way ophyd's own ``_pyepics_shim`` is, on :class:`capar.PV`.

Threads: libca's threads (preemptive callbacks) only update a PV's fields and hand every ophyd callback
(connection, access rights, monitor, put completion) to ophyd's ``EventDispatcher``; ophyd's code runs on
the dispatcher's threads (``metadata``, ``monitor``, ``get_put``, ``util0..3``), which are attached to capar's
initial context, never on libca's threads.  A blocking ``get``/``put`` runs in the caller's thread.
``thread_class`` (ophyd's set threads) is :class:`capar.ca.CAThread`.

``import capar.ophyd`` imports neither ophyd nor libca; :func:`use_capar` imports ophyd (with its dummy
control layer, so pyepics is never imported for it) and creates capar's CA context.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import types
from typing import Any, Callable, Optional

from . import ca
from .ca.context import CAThread
from .pv import PV, caget, caput

__all__ = ["use_capar", "control_layer", "CaparShimPV", "setup", "get_pv", "release_pvs", "caget", "caput",
           "get_dispatcher", "thread_class", "name"]

module_logger = logging.getLogger("capar.ophyd")

#: the control layer's name, as ophyd reports it (``Signal.cl.name``)
name = "capar"
#: the thread class ophyd starts its set threads with: attaches capar's initial context first
thread_class = CAThread

#: what ophyd's ``set_cl`` copies from a shim module into ``ophyd.cl``
_EXPORTS = ("setup", "caput", "caget", "get_pv", "thread_class", "name", "release_pvs", "get_dispatcher")

#: pyepics-compatible PVs cannot wait forever: ophyd's ``timeout=None`` becomes ten years (seconds)
_FOREVER = 315569520.0


def _state() -> types.SimpleNamespace:
    """The layer's per-process state, kept by capar's context registry (fresh after fork):
    ``dispatcher`` (ophyd's EventDispatcher), ``layer`` (what ophyd.cl is), ``lock``, and ``cache``, get_pv's
    cache: (pvname, form, context handle) -> CaparShimPV, separate from capar.get_pv's own, so plain capar
    PVs of the same name never receive ophyd's dispatcher-wrapped callbacks (nor the reverse)."""
    return ca.context.process_state("ophyd", lambda: types.SimpleNamespace(
        dispatcher=None, layer=None, lock=threading.RLock(), cache={}))


def _import_ophyd() -> types.ModuleType:
    """``import ophyd`` with its dummy control layer when it is not imported yet.

    ophyd picks a control layer at import time (``OPHYD_CONTROL_LAYER``, default: pyepics first); pyepics
    would load a libca and start a second dispatcher that :func:`use_capar` replaces at once.
    """
    mod = sys.modules.get("ophyd")
    if mod is not None:
        return mod
    saved = os.environ.get("OPHYD_CONTROL_LAYER")
    os.environ["OPHYD_CONTROL_LAYER"] = "dummy"
    try:
        import ophyd
    finally:
        if saved is None:
            os.environ.pop("OPHYD_CONTROL_LAYER", None)
        else:
            os.environ["OPHYD_CONTROL_LAYER"] = saved
    return ophyd


def _wrap(event_type: str, callback: Optional[Callable]) -> Optional[Callable]:
    """*callback* queued to the dispatcher thread *event_type* (as ophyd's ``wrap_callback``)."""
    dispatcher = _state().dispatcher
    if callback is None or dispatcher is None:
        return callback
    from ophyd._dispatch import wrap_callback

    return wrap_callback(dispatcher, event_type, callback)


def get_dispatcher() -> Any:
    """The ophyd ``EventDispatcher`` of the capar control layer (None before :func:`setup`)."""
    return _state().dispatcher


class CaparShimPV(PV):
    """A :class:`capar.PV` whose callbacks run on ophyd's dispatcher threads (ophyd's ``PyepicsShimPV``).

    Arguments as :class:`capar.PV` (``connection_timeout`` in seconds).  ``_reference_count`` counts the
    ophyd Signals holding the PV; :func:`release_pvs` clears it when the last one lets go.
    """

    def __init__(self, pvname: str, callback: Any = None, form: str = "time", verbose: bool = False,
                 auto_monitor: Any = None, count: Optional[int] = None,
                 connection_callback: Optional[Callable] = None, connection_timeout: Optional[float] = None,
                 access_callback: Optional[Callable] = None, monitor_delta: Optional[float] = None) -> None:
        if isinstance(callback, (list, tuple)):
            callback = [_wrap("monitor", cb) for cb in callback]
        else:
            callback = _wrap("monitor", callback)
        self._reference_count = 0
        super().__init__(pvname, callback=callback, form=form, verbose=verbose, auto_monitor=auto_monitor,
                         count=count, connection_callback=_wrap("metadata", connection_callback),
                         connection_timeout=connection_timeout,
                         access_callback=_wrap("metadata", access_callback), monitor_delta=monitor_delta)
        self._cache_key = (self.pvname, self.form, self.context)

    def add_callback(self, callback: Optional[Callable] = None, index: Optional[int] = None,
                     run_now: bool = False, with_ctrlvars: bool = True, **kw: Any) -> Optional[int]:
        """Add a value callback (run on the ``monitor`` dispatcher thread), subscribing if needed."""
        if not self.auto_monitor:
            self.auto_monitor = ca.DEFAULT_SUBSCRIPTION_MASK
        return super().add_callback(callback=_wrap("monitor", callback), index=index, run_now=run_now,
                                    with_ctrlvars=with_ctrlvars, **kw)

    def get_with_metadata(self, count: Optional[int] = None, as_string: bool = False, as_numpy: bool = True,
                          timeout: Optional[float] = None, with_ctrlvars: bool = False, form: Optional[str] = None,
                          use_monitor: bool = True, as_namespace: bool = False) -> Any:
        """:meth:`capar.PV.get_with_metadata`; timeout in seconds.  ophyd names the PV's own form on every
        read (``form='time'``): that is the PV's DBR type already, so no libca query is made for it."""
        return super().get_with_metadata(count=count, as_string=as_string, as_numpy=as_numpy, timeout=timeout,
                                         with_ctrlvars=with_ctrlvars, form=None if form == self.form else form,
                                         use_monitor=use_monitor, as_namespace=as_namespace)

    def put(self, value: Any, wait: bool = False, timeout: Optional[float] = None, use_complete: bool = False,
            callback: Optional[Callable] = None, callback_data: Any = None) -> Optional[int]:
        """Write *value*; the completion *callback* runs on the ``get_put`` dispatcher thread.

        timeout : float, seconds to wait for completion; None waits (practically) forever, as ophyd means it.
        """
        return super().put(value, wait=wait, timeout=_FOREVER if timeout is None else timeout,
                           use_complete=use_complete, callback=_wrap("get_put", callback),
                           callback_data=callback_data)

    def _getarg(self, arg: str) -> Any:
        # as ophyd's shim: fetch missing metadata with a short timeout (1 s), never the value itself
        if self._args.get(arg) is None and self.connected:
            if arg in ("status", "severity", "timestamp", "posixseconds", "nanoseconds"):
                self.get_timevars(timeout=1, warn=False)
            else:
                self.get_ctrlvars(timeout=1, warn=False)
        return self._args.get(arg)

    def get_all_metadata_blocking(self, timeout: float) -> dict[str, Any]:
        """TIME and CTRL metadata (no value) read in the calling thread; timeout in seconds per request."""
        if self._args["status"] is None:
            self.get_timevars(timeout=timeout)
        self.get_ctrlvars(timeout=timeout)
        md = self._args.copy()
        md.pop("value", None)
        return md

    def get_all_metadata_callback(self, callback: Callable[[str, dict], Any], *, timeout: float) -> None:
        """Read the metadata on a dispatcher utility thread, then ``callback(pvname, md)``; timeout in seconds."""
        def get_metadata_thread(pvname: str) -> None:
            callback(pvname, self.get_all_metadata_blocking(timeout=timeout))

        _state().dispatcher.schedule_utility_task(get_metadata_thread, pvname=self.pvname)

    def clear_callbacks(self, with_access_callback: bool = True, with_connect_callback: bool = True) -> None:
        """Remove every value, access and connection callback (ophyd's meaning of the call)."""
        super().clear_callbacks(with_access_callback=with_access_callback,
                                with_connect_callback=with_connect_callback)


def get_pv(pvname: str, form: str = "time", connect: bool = False, context: Any = None, timeout: float = 5.0,
           connection_callback: Optional[Callable] = None, access_callback: Optional[Callable] = None,
           callback: Optional[Callable] = None, verbose: bool = False, count: Optional[int] = None,
           auto_monitor: Any = None, monitor_delta: Optional[float] = None, **kws: Any) -> CaparShimPV:
    """The control layer's cached :class:`CaparShimPV` for (name, form, context), created if needed.

    timeout : float, seconds: the new PV's ``connection_timeout``, and the wait when *connect*.
    On a cache hit the callbacks are added (the connection and access callbacks are also called, on the
    dispatcher, when the PV is connected already), as pyepics' ``get_pv`` does.  *context* is ignored: PVs
    are created in the calling thread's context (capar's initial context for ophyd's threads).
    """
    if form not in ("native", "time", "ctrl"):
        form = "time"
    pvname = pvname.strip()
    ctx = ca.context.ensure_context()
    key = (pvname, form, ctx)
    st = _state()
    with st.lock:
        pv = st.cache.get(key)
        if pv is not None and pv.chid is not None and not pv._channel_known():
            pv = None  # its channel was cleared under it (ca.clear_cache): a fresh PV
        if pv is None:
            pv = CaparShimPV(pvname, form=form, callback=callback, connection_callback=connection_callback,
                             access_callback=access_callback, connection_timeout=timeout, verbose=verbose,
                             count=count, auto_monitor=auto_monitor, monitor_delta=monitor_delta)
            st.cache[key] = pv
        else:
            conn_cb = _wrap("metadata", connection_callback)
            access_cb = _wrap("metadata", access_callback)
            if conn_cb is not None:
                pv.connection_callbacks.append(conn_cb)
                if pv.connected:
                    conn_cb(pvname=pv.pvname, conn=True, pv=pv)
            if access_cb is not None:
                pv.access_callbacks.append(access_cb)
                if pv.connected:
                    access_cb(pv.read_access, pv.write_access, pv=pv)
            if callable(callback):
                pv.run_callback(pv.add_callback(callback))  # type: ignore[arg-type]
            if auto_monitor and not pv.auto_monitor:
                pv.auto_monitor = auto_monitor
    if connect and not pv.wait_for_connection(timeout=timeout):
        module_logger.warning("capar.ophyd: cannot connect to %s (%.1f s)", pvname, timeout)
    return pv


def release_pvs(*pvs: CaparShimPV) -> None:
    """Drop one ophyd reference of each PV; the last one clears its callbacks, monitor and (unless a PV
    outside ophyd still uses it) its channel, and removes it from :func:`get_pv`'s cache."""
    st = _state()
    for pv in pvs:
        with st.lock:
            pv._reference_count -= 1
            if pv._reference_count > 0:
                continue
            if st.cache.get(pv._cache_key) is pv:
                del st.cache[pv._cache_key]
        chid = pv.chid
        pv.clear_callbacks()
        pv.disconnect()
        if chid is None:
            continue
        try:
            entry = ca.channel_entry(chid)
        except ca.CAError:
            continue  # already cleared
        if not entry.callbacks and not entry.access_callbacks and not entry.subs:
            ca.clear_channel(chid)  # no other PV object holds this channel


def _callback_thread_class() -> type:
    from ophyd._dispatch import _CallbackThread

    class CaparCallbackThread(_CallbackThread):
        """ophyd's dispatcher thread, attached to the dispatcher's capar context (the initial one)."""

        def attach_context(self) -> None:
            super().attach_context()
            if self.context:
                ca.attach_context(self.context)
            else:
                ca.use_initial_context()

        def detach_context(self) -> None:
            super().detach_context()
            ca.detach_context()

    return CaparCallbackThread


def setup(logger: Optional[logging.Logger] = None) -> Any:
    """Start the control layer's ophyd ``EventDispatcher`` (once per process); returns it.

    Creates capar's initial CA context (loads libca) if needed.  An ``atexit`` hook stops the dispatcher
    before capar's own exit hook destroys the context.
    """
    logger = logger or module_logger
    st = _state()
    with st.lock:
        if st.dispatcher is not None:
            logger.debug("capar control layer already set up")
            return st.dispatcher
        from ophyd._dispatch import EventDispatcher

        context = ca.context.ensure_context()
        logger.debug("Installing the capar event dispatcher")
        st.dispatcher = EventDispatcher(thread_class=_callback_thread_class(), context=context, logger=logger)
        atexit.register(_cleanup, st)  # registered after capar's context hook, so it runs before it
        return st.dispatcher


def _cleanup(st: types.SimpleNamespace) -> None:
    with st.lock:
        dispatcher, st.dispatcher = st.dispatcher, None
    if dispatcher is not None and dispatcher.is_alive():
        dispatcher.stop()


def control_layer() -> types.SimpleNamespace:
    """The capar control layer as ophyd stores it in ``ophyd.cl`` (set up first; one object per process)."""
    setup()
    st = _state()
    with st.lock:
        if st.layer is None:
            this = sys.modules[__name__]
            st.layer = types.SimpleNamespace(**{k: getattr(this, k) for k in _EXPORTS})
        return st.layer


def use_capar(logger: Optional[logging.Logger] = None) -> types.SimpleNamespace:
    """Make ophyd use capar as its EPICS control layer (``ophyd.cl``); returns the layer.

    Call it before the first ophyd Signal or Device is created: each binds ``ophyd.cl`` when it is made.
    When ophyd is not imported yet it is imported with its dummy layer, so pyepics is not loaded for it.
    Idempotent.
    """
    ophyd = _import_ophyd()
    if logger is None:
        logger = getattr(ophyd, "logger", None)
    with _state().lock:
        setup(logger)
        layer = control_layer()
        ophyd.cl = layer
    return layer
