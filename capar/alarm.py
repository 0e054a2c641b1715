"""``epics.alarm``: run a callback when a PV's value crosses a trip point (pyepics' ``Alarm``)."""
from __future__ import annotations

import operator
import sys
import time
from typing import Any, Callable, Optional, Union

from . import pv as _pv

__all__ = ["Alarm"]


class Alarm:
    """Call ``callback(pvname=, value=, char_value=, trip_point=, comparison=, **fields)`` when
    ``comparison(value, trip_point)`` becomes true, at most once per *alert_delay* seconds.

    Parameters
    ----------
    pvname : str or PV
    comparison : one of ``'eq' 'ne' 'le' 'lt' 'ge' 'gt'`` (``'=='`` ... ``'>'``, ``'g_t'`` spellings too),
        or a callable ``cmp(value, trip_point)``.
    trip_point : the value compared with.
    callback : called on entering the alarm state (runs on libca's thread, like every PV callback);
        without one, a line ``Alarm: NAME=VALUE (time)`` goes to stdout.
    alert_delay : float, seconds to stay quiet after an alert.  The state is checked only when the value
        changes, so this is a minimum.

    Raises ``UserWarning`` (as pyepics) when the PV, comparison or trip point is missing.
    """

    ops = {"eq": operator.__eq__, "==": operator.__eq__, "ne": operator.__ne__, "!=": operator.__ne__,
           "le": operator.__le__, "<=": operator.__le__, "lt": operator.__lt__, "<": operator.__lt__,
           "ge": operator.__ge__, ">=": operator.__ge__, "gt": operator.__gt__, ">": operator.__gt__}

    def __init__(self, pvname: Union[str, "_pv.PV"], comparison: Union[str, Callable, None] = None,
                 trip_point: Any = None, callback: Optional[Callable] = None, alert_delay: float = 10) -> None:
        self.pv: Optional[_pv.PV] = None
        if isinstance(pvname, _pv.PV):
            self.pv = pvname
        elif isinstance(pvname, str):
            self.pv = _pv.get_pv(pvname)
            self.pv.connect()
        if self.pv is None or comparison is None or trip_point is None:
            raise UserWarning("alarm requires valid PV, comparison, and trip_point")
        self.trip_point = trip_point
        self.last_alert = 0.0
        self.alert_delay = alert_delay
        self.user_callback = callback
        self.cmp: Optional[Callable] = None
        self.comp_name = "Not Defined"
        if callable(comparison):
            self.comp_name = getattr(comparison, "__name__", repr(comparison))
            self.cmp = comparison
        else:
            self.cmp = self.ops.get(str(comparison).replace("_", ""))
            if self.cmp is not None:
                self.comp_name = str(comparison)
        self.alarm_state = False
        self.pv.add_callback(self.check_alarm)
        self.check_alarm()

    def __repr__(self) -> str:
        assert self.pv is not None
        return f"<Alarm pvname='{self.pv.pvname}',comp='{self.comp_name}','trip_point={self.trip_point}>"

    def reset(self) -> None:
        """Forget the alarm state and the last alert time."""
        self.last_alert = 0.0
        self.alarm_state = False

    def check_alarm(self, pvname: Optional[str] = None, value: Any = None, char_value: Any = None,
                    **kw: Any) -> None:
        """Evaluate the comparison for a new value (the PV callback); alert on entering the alarm state."""
        if pvname is None or value is None or self.cmp is None or self.trip_point is None:
            return
        if char_value is None:
            char_value = value
        old_state = self.alarm_state
        self.alarm_state = bool(self.cmp(value, self.trip_point))
        now = time.time()
        if self.alarm_state and not old_state and (now - self.last_alert) > self.alert_delay:
            self.last_alert = now
            if callable(self.user_callback):
                self.user_callback(pvname=pvname, value=value, char_value=char_value,
                                   trip_point=self.trip_point, comparison=self.comp_name, **kw)
            else:
                sys.stdout.write(f"Alarm: {pvname}={char_value} ({time.ctime()})\n")
