"""``epics.motor``: the EPICS motor record as an object (pyepics' ``Motor``).

``m = Motor("XX:m1")``; ``m.move(1.5, wait=True)``, ``m.get_position(readback=True)``, ``m.tweak("reverse")``,
``m.stop()``, limits, ``set_position`` (SET/USE), callbacks; every motor record field is an attribute, by
field name (``m.VELO``) or by pyepics' long names (``m.slew_speed``).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from . import ca
from .device import Device

__all__ = ["Motor", "MotorException", "MotorLimitException"]


class MotorLimitException(Exception):
    """A motor limit (soft or hard) is violated; ``msg`` holds the text."""

    def __init__(self, msg: str, *args: Any) -> None:
        Exception.__init__(self, *args)
        self.msg = msg

    def __str__(self) -> str:
        return str(self.msg)


class MotorException(Exception):
    """Not a motor, no such field, or no name; ``msg`` holds the text."""

    def __init__(self, msg: str, *args: Any) -> None:
        Exception.__init__(self, *args)
        self.msg = msg

    def __str__(self) -> str:
        return str(self.msg)


#: pyepics' long names of motor record fields
_ALIAS = {
    "acceleration": "ACCL", "back_accel": "BACC", "backlash": "BDST", "back_speed": "BVEL", "card": "CARD",
    "dial_high_limit": "DHLM", "direction": "DIR", "dial_low_limit": "DLLM", "settle_time": "DLY",
    "done_moving": "DMOV", "dial_readback": "DRBV", "description": "DESC", "dial_drive": "DVAL", "units": "EGU",
    "encoder_step": "ERES", "freeze_offset": "FOFF", "move_fraction": "FRAC", "hi_severity": "HHSV",
    "hi_alarm": "HIGH", "hihi_alarm": "HIHI", "high_limit": "HLM", "high_limit_set": "HLS", "hw_limit": "HLSV",
    "home_forward": "HOMF", "home_reverse": "HOMR", "high_op_range": "HOPR", "high_severity": "HSV",
    "integral_gain": "ICOF", "jog_accel": "JAR", "jog_forward": "JOGF", "jog_reverse": "JOGR", "jog_speed": "JVEL",
    "last_dial_val": "LDVL", "low_limit": "LLM", "low_limit_set": "LLS", "lo_severity": "LLSV",
    "lolo_alarm": "LOLO", "low_op_range": "LOPR", "low_alarm": "LOW", "last_rel_val": "LRLV",
    "last_dial_drive": "LRVL", "last_SPMG": "LSPG", "low_severity": "LSV", "last_drive": "LVAL",
    "soft_limit": "LVIO", "in_progress": "MIP", "missed": "MISS", "moving": "MOVN", "resolution": "MRES",
    "motor_status": "MSTA", "offset": "OFF", "output_mode": "OMSL", "output": "OUT", "prop_gain": "PCOF",
    "precision": "PREC", "readback": "RBV", "retry_max": "RTRY", "retry_count": "RCNT", "retry_deadband": "RDBD",
    "dial_difference": "RDIF", "raw_encoder_pos": "REP", "raw_high_limit": "RHLS", "raw_low_limit": "RLLS",
    "relative_value": "RLV", "raw_motor_pos": "RMP", "raw_readback": "RRBV", "readback_res": "RRES",
    "raw_drive": "RVAL", "dial_speed": "RVEL", "s_speed": "S", "s_back_speed": "SBAK", "s_base_speed": "SBAS",
    "s_max_speed": "SMAX", "set": "SET", "stop_go": "SPMG", "s_revolutions": "SREV", "stop_command": "STOP",
    "t_direction": "TDIR", "tweak_forward": "TWF", "tweak_reverse": "TWR", "tweak_val": "TWV",
    "use_encoder": "UEIP", "u_revolutions": "UREV", "use_rdbl": "URIP", "drive": "VAL", "base_speed": "VBAS",
    "slew_speed": "VELO", "version": "VERS", "max_speed": "VMAX", "use_home": "ATHM", "deriv_gain": "DCOF",
    "use_torque": "CNEN", "device_type": "DTYP", "record_type": "RTYP", "status": "STAT",
}


class Motor(Device):
    """An EPICS motor record (``RTYP`` must be ``motor``: else :class:`MotorException`).

    Parameters
    ----------
    name : str
        Record name (a trailing ``.VAL`` or ``.`` is dropped).
    timeout : float
        Connection timeout of the record's PVs (seconds).

    Return codes of :meth:`move` (pyepics'): -13 value not a float, -12 outside limits, -11 not connected,
    -8 wait timed out while moving, -7 wait timed out but done, -5 unknown error, -4/-3 finished at a
    soft/hard limit, 0 finished (or move begun, not waited), 1 move begun and seen moving, 4/3 not waited
    and at a soft/hard limit.
    """

    _extras = {"disabled": "_able.VAL"}
    _alias = _ALIAS
    _init_list = ("VAL", "DESC", "RTYP", "RBV", "PREC", "TWV", "FOFF", "VELO", "STAT", "SET", "LLM", "HLM",
                  "SPMG", "LVIO", "HLS", "LLS", "disabled")
    _nonpvs = ("_prefix", "_pvs", "_delim", "_init", "_init_list", "_alias", "_extras")

    def __init__(self, name: Optional[str] = None, timeout: float = 3.0) -> None:
        if name is None:
            raise MotorException("must supply motor name")
        if name.endswith(".VAL"):
            name = name[:-4]
        if name.endswith("."):
            name = name[:-1]
        self._prefix = name
        Device.__init__(self, name, delim=".", attrs=self._init_list, timeout=timeout)
        rectype = self.get("RTYP")
        if rectype != "motor":
            raise MotorException(f"{name} is not an Epics Motor")
        for key, suffix in self._extras.items():
            self.add_pv(f"{name}{suffix}", attr=key)
        self._callbacks: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<epics.Motor: {self._prefix}: '{self.DESC}'>"

    def __str__(self) -> str:
        return self.__repr__()

    def __getattr__(self, attr: str) -> Any:
        attr = self._alias.get(attr, attr)
        if attr in self._pvs:
            return self.get(attr)
        if attr.startswith("__"):
            return self._pvs[attr]
        pv = self.PV(attr, connect=True)
        if not pv.connected:
            raise MotorException(f"EpicsMotor has no attribute {attr}")
        return self.get(attr)

    def __setattr__(self, attr: str, val: Any) -> None:
        if attr in ("name", "_prefix", "_pvs", "_delim", "_init", "_alias", "_nonpvs", "_extra", "_callbacks",
                    "_aliases", "_mutable"):
            self.__dict__[attr] = val
            return
        attr = self._alias.get(attr, attr)
        if attr in self._pvs:
            self.put(attr, val)
        elif attr in self.__dict__:
            self.__dict__[attr] = val
        elif self._init:
            try:
                self.PV(attr)
                self.put(attr, val)
            except Exception:
                raise MotorException(f"EpicsMotor has no attribute {attr}") from None

    def put(self, attr: str, value: Any, wait: bool = False, use_complete: bool = False,
            timeout: float = 10) -> Optional[int]:
        """Write a field (long names accepted); *timeout* seconds when waiting."""
        return Device.put(self, self._alias.get(attr, attr), value, wait=wait, use_complete=use_complete,
                          timeout=timeout)

    def get(self, attr: str, as_string: bool = False, count: Optional[int] = None,
            timeout: Optional[float] = None) -> Any:
        """Read a field (long names accepted); *timeout* seconds."""
        return Device.get(self, self._alias.get(attr, attr), as_string=as_string, count=count, timeout=timeout)

    def check_limits(self) -> None:
        """Raise :class:`MotorLimitException` when a soft or hard limit is violated."""
        for field, msg in (("LVIO", "Soft limit violation"), ("HLS", "High hard limit violation"),
                           ("LLS", "Low  hard limit violation")):
            if self.get(field) != 0:
                raise MotorLimitException(msg)

    def within_limits(self, val: float, dial: bool = False) -> bool:
        """Whether *val* (user, or dial coordinates) lies within the soft limits."""
        low, high = ("DLLM", "DHLM") if dial else ("LLM", "HLM")
        return self.get(low) <= val <= self.get(high)

    def move(self, val: Any = None, relative: bool = False, wait: bool = False, timeout: float = 300.0,
             dial: bool = False, step: bool = False, raw: bool = False, ignore_limits: bool = False,
             confirm_move: bool = False) -> int:
        """Move to *val* (user units; *dial* or *raw*/*step* coordinates; *relative* to the drive value).

        With *wait*, block until done or *timeout* seconds.  Returns a code (class docstring).
        """
        step = step or raw
        try:
            val = float(val)  # type: ignore[arg-type]
        except TypeError:  # None, a list ...: -13; text that is not a number raises ValueError (pyepics)
            return -13
        drv = "DVAL" if dial else "RVAL" if step else "VAL"
        if relative:
            val += self.get(drv)
        if not ignore_limits and not step and not self.within_limits(val, dial=dial):
            return -12
        stat = self.put(drv, val, wait=wait, timeout=timeout)
        if stat is None:
            return -11
        if wait and stat == -1:
            return -8 if self.get("DMOV") == 0 else -7
        if stat != 1:
            return -5
        if wait:
            if self.get("LVIO") == 1:
                return -4
            if self.get("HLS") == 1 or self.get("LLS") == 1:
                return -3
            return 0
        if self.get("LVIO") == 1 or confirm_move:
            ca.poll(evt=1.e-2)
        if confirm_move:
            t0 = time.time()
            while self.get("MOVN") == 0 and time.time() - t0 <= 0.25:
                ca.poll(evt=1.e-3)
        if self.get("MOVN") == 1:
            return 1
        if self.get("LVIO") == 1:
            return 4
        if self.get("HLS") == 1 or self.get("LLS") == 1:
            return 3
        return 0

    def get_position(self, dial: bool = False, readback: bool = False, step: bool = False,
                     raw: bool = False) -> Any:
        """The drive value (or with *readback* the readback), in user, dial or raw coordinates."""
        pos, rbv = ("DVAL", "DRBV") if dial else ("RVAL", "RRBV") if (step or raw) else ("VAL", "RBV")
        return self.get(rbv if readback else pos)

    def tweak(self, direction: str = "foreward", wait: bool = False, timeout: float = 300.0) -> Optional[int]:
        """Move by TWV forward (default) or in reverse (``'reverse'``/``'back...'``); 0 ok, -1 at a limit."""
        field = "TWR" if direction.startswith(("rev", "back")) else "TWF"
        stat = self.put(field, 1, wait=wait, timeout=timeout)
        ret = 0 if stat == 1 else -1 if stat == -2 else stat
        try:
            self.check_limits()
        except MotorLimitException:
            ret = -1
        return ret

    def set_position(self, position: float, dial: bool = False, step: bool = False, raw: bool = False) -> None:
        """Redefine the current position as *position* without moving (SET mode, then back to USE)."""
        self.put("SET", 1, wait=True)
        drv = "DVAL" if dial else "RVAL" if (step or raw) else "VAL"
        self.put(drv, position, wait=True)
        self.put("SET", 0)

    def get_pv(self, attr: str) -> Any:
        """The PV object of a field."""
        return self.PV(attr)

    def clear_callback(self, attr: str = "drive") -> None:
        """Remove the callback :meth:`set_callback` put on *attr*."""
        try:
            index = self._callbacks.get(attr)
            if index is not None:
                self.PV(attr).remove_callback(index=index)
        except Exception:
            self.PV(attr).clear_callbacks()

    def set_callback(self, attr: str = "VAL", callback: Optional[Callable] = None,
                     kws: Optional[dict] = None) -> None:
        """Call *callback* on changes of field *attr*, with ``motor_field=attr`` and *kws* among its keywords."""
        self.get(attr)
        kw_args = {"motor_field": attr, **(kws or {})}
        self._callbacks[attr] = self.PV(attr).add_callback(callback=callback, **kw_args)

    def refresh(self) -> None:
        """Poll CA once."""
        ca.poll()

    def StopNow(self) -> None:
        """Stop the motor now."""
        self.stop()

    def stop(self) -> None:
        """Stop the motor now (STOP = 1)."""
        self.STOP = 1

    def make_step_list(self, minstep: float = 0.0, maxstep: Optional[float] = None, decades: int = 10) -> list:
        """Step sizes 1, 2, 5 x 10^k (from the record's precision) between *minstep* and *maxstep*."""
        if maxstep is None:
            maxstep = 0.6 * abs(self.HLM - self.LLM)
        steps = []
        for i in range(decades):
            for step in [j * 10 ** (i - self.PREC) for j in (1, 2, 5)]:
                if 0.98 * minstep < step <= maxstep:
                    steps.append(step)
        return steps

    def get_info(self) -> dict:
        """The main fields as text: DESC VAL RBV PREC VELO STAT SET TWV LLM HLM SPMG."""
        return {attr: self.get(attr, as_string=True)
                for attr in ("DESC", "VAL", "RBV", "PREC", "VELO", "STAT", "SET", "TWV", "LLM", "HLM", "SPMG")}

    def show_info(self) -> None:
        """Print :meth:`get_info` (stdout)."""
        ca.poll()
        out = [repr(self), "--------------------------------------"]
        out += [f"{name:<16s} = {val}" for name, val in self.get_info().items()]
        out.append("--------------------------------------")
        ca.write("\n".join(out))

    def show_all(self) -> None:
        """Print every aliased field: long name, value, PV name (stdout)."""
        out = [f"# Motor {self._prefix}", "#  field               value                 PV name",
               "#------------------------------------------------------------"]
        ca.poll()
        for attr in sorted(self._alias):
            suffix = self._alias[attr]
            value = self.get(suffix, as_string=True)
            value = "Not Connected??" if value is None else str(value)
            out.append(f" {attr[:18]:<18s}  {value:<18s}  {self.PV(suffix).pvname}")
        ca.write("\n".join(out))
