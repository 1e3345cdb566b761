"""Every chat command; importing this package registers them all with the router."""

from bot.commands import accounts, lists, meta

__all__ = ["accounts", "lists", "meta"]
