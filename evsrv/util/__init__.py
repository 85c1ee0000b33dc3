"""
The bottom layer: helpers that know nothing of events, subscriptions or
listeners, imported by every layer above and importing none of them (wire
text, ini coercers, host names and ports, IP network lists, statistics,
rate-limited logging, the plugin factory shape, and the one place that
reaches into Twisted's private names).
"""
