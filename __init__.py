"""Why a repository root holds an ``__init__.py``: so that a script beside a clone of ditfarm imports ditfarm.

With ``~/src/ditfarm`` (this clone) and ``~/src/try.py``, Python looks for ``import ditfarm`` in the script's folder
first and finds this folder.  Without this file it would be an empty namespace package that shadows the installed
ditfarm (``module 'ditfarm' has no attribute 'load_pipeline'``).  With it, this folder is the package itself, laid
out as the installed one maps it: the top package's modules in ``ditfarm/`` and its subpackages (``jobs``,
``cluster``, ``cache``, ``pipelines``) beside it.  Nothing imports this file in any other way: installs ship
``ditfarm/`` and the subpackages, never the repository root.
"""

import os as _os

_root = _os.path.dirname(_os.path.abspath(__file__))
__path__ = [_os.path.join(_root, "ditfarm"), _root]  # noqa: F811 - the package's own modules, then its subpackages
_init = _os.path.join(_root, "ditfarm", "__init__.py")
with open(_init) as _source:
    exec(compile(_source.read(), _init, "exec"))  # the real package's __init__: its exports and version
del _os, _root, _init, _source
