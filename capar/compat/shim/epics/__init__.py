"""``epics`` in a process started from ``python -m capar.compat`` (this directory is on its ``sys.path``).

Installs the capar alias and replaces itself with the ``capar`` package, so ``epics`` *is* capar.
"""
import sys

if __name__ == "epics":
    import capar.compat as _compat

    _compat.install()
    import capar as _capar

    sys.modules["epics"] = _capar
