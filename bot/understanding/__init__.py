"""The natural-language layer: free text in English or Chinese → the same command a user could have typed.

`pipeline.Understanding` is the entry point the router calls; docs/understanding.md is the contract of what each
kind of question becomes. The phrasings that train the intent classifier and the lexicon of slot words are data
files in `data/`.
"""
