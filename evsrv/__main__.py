"""
C{python -m evsrv}: the C{evsrv} command (L{evsrv.run}), for when the
console script is not on the PATH.
"""

from evsrv.run import main

if __name__ == "__main__":
    main()
