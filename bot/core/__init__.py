"""The conversation core every platform shares: the router, messages, permissions, words, number formats
and how the words after a command are read."""
