"""
The HTTP site of evsrv (OpenSIPS httpd + mi_http, and Prometheus metrics):
JSON-RPC MI by POST and C{/metrics}, on one TCP port from the C{[http]}
section of the ini.
"""

from evsrv.http.site import HTTPService, build_site

__all__ = ["HTTPService", "build_site"]
