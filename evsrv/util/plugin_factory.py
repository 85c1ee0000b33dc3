# -*- test-case-name: tests.test_thirdparty_plugins -*-
"""
The shape every evsrv plugin factory shares.
"""


class PluginFactory:
    """
    A plugin described by data: its C{name}, its ini C{options}
    (key -> (default text, coercer, help)) and a C{build(settings, context)}
    callable.
    """

    def __init__(self, name, options, build, description=""):
        self.name = name
        self.options = options
        self._build = build
        self.description = description

    def build(self, settings, context):
        return self._build(settings, context)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"
