from twisted.application.service import ServiceMaker

evsrv = ServiceMaker("evsrv", "evsrv.tap", "OpenSIPS-compatible event notification server.", "evsrv")
