"""The Feishu/Lark adapter (lark-oapi): long connection or event subscription in, interactive cards out.

Importing `lark_oapi` takes seconds, so nothing imports this package unless Feishu is configured.
"""
