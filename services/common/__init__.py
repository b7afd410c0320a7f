"""The one service runtime: settings, serving, health, reflection, errors, auth, deadlines, logging.

It knows no service; every service imports it.
"""
