"""Holds the ``epics`` shim package that :func:`capar.compat.install` puts on ``sys.path``."""
